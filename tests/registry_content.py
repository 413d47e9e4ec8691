"""The content of every registry table, without what says when or in which order it was
written: two runs that should agree (fast vs reference path, N workers vs one process) compare
these. Used by tests and by ``benchmarks/bench_workers.py``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

# Columns that say when or in which order something was written, not what.
VOLATILE = {"id", "first_seen", "last_seen", "updated_at", "received_at", "mapped_at", "checked_at"}
TABLES = {
    "patients": "source, id",
    "encounters": "source, id",
    "procedures": "source, id",
    "conditions": "source, id",
    "prom_responses": "source, id",
    "cases": "id",
    "mapping_errors": "staging_id, code, field",
    "staging": "source, resource_type, resource_id",
}


def registry_content(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    for table, order in TABLES.items():
        rows = conn.execute(text(f"SELECT * FROM {table} ORDER BY {order}")).mappings()
        out[table] = [tuple((k, v) for k, v in row.items() if k not in VOLATILE) for row in rows]
    return out
