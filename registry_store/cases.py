"""Writes to surgical cases and to the case/time point a PROM response is filed under.

Case assembly (``mappings.cases``) decides what the cases are; these functions store it, in
the caller's transaction. Cases are never deleted: reminders and audit history point at them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Connection

from registry_store.db import upsert
from registry_store.tables import CASES, PROM_RESPONSES


def upsert_cases(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert new cases and update existing ones (same ``id``)."""
    upsert(conn, CASES, rows, keys=["id"])


def set_case_status(conn: Connection, case_id: str, status: str, reason: str | None, *, at: datetime) -> None:
    """A case leaves (or returns to) the active set, with the reason staff will read."""
    conn.execute(
        update(CASES)
        .where(CASES.c.id == case_id)
        .values(status=status, status_reason=reason, updated_at=at)
    )


def file_prom_response(
    conn: Connection, source: str, response_id: str, case_id: str | None, timepoint: str | None
) -> None:
    """File a PROM response under a case's time point (None, None: under none)."""
    conn.execute(
        update(PROM_RESPONSES)
        .where(PROM_RESPONSES.c.source == source, PROM_RESPONSES.c.id == response_id)
        .values(case_id=case_id, timepoint=timepoint)
    )
