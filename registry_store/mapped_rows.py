"""Writes of what mappings produce: the rows of the registry tables mappings target
(``tables.MAPPING_TARGETS``: patients, encounters, procedures, conditions, PROM responses).

Each row is keyed by (source, id), the staged record it came from; the pipeline writes them
in the transaction that marks those records mapped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, delete
from sqlalchemy.engine import Connection

from registry_store.db import upsert
from registry_store.tables import MAPPING_TARGETS

# Ids per DELETE: well under SQLite's bound-parameter limit.
_DELETE_CHUNK = 400


def write_mapped_rows(conn: Connection, target: str, rows: Sequence[dict[str, Any]]) -> None:
    """Insert or replace rows of the mapping target table ``target``."""
    upsert(conn, MAPPING_TARGETS[target], rows, keys=["source", "id"])


def delete_mapped_rows(conn: Connection, target: str, source: str, ids: Sequence[str]) -> None:
    """Delete the rows of ``target`` that records of ``source`` with these ids produced."""
    table = MAPPING_TARGETS[target]
    for start in range(0, len(ids), _DELETE_CHUNK):
        chunk = list(ids[start : start + _DELETE_CHUNK])
        conn.execute(delete(table).where(and_(table.c.source == source, table.c.id.in_(chunk))))
