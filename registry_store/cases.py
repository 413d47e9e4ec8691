"""Writes to surgical cases and to the case/time point a PROM response is filed under.

Case assembly (``mappings.cases``) decides what the cases are; these functions store it, in
the caller's transaction. Cases are never deleted: reminders and audit history point at them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select, update
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


def touch_cases(conn: Connection, case_ids: Sequence[str], *, at: datetime) -> None:
    """Mark cases changed (``updated_at``) whose PROM responses changed without the case row
    itself being rebuilt (a response of a linked patient in another feed placed on it), so
    "cases updated since" names every case whose reminders or outcomes may have changed."""
    ids = sorted(set(case_ids))
    for start in range(0, len(ids), 400):
        conn.execute(update(CASES).where(CASES.c.id.in_(ids[start : start + 400])).values(updated_at=at))


def file_prom_responses(
    conn: Connection, placements: Sequence[tuple[str, str, str | None, str | None]]
) -> None:
    """File many PROM responses at once: (source, response id, case id, time point) each, one
    executemany (case assembly places every response of the patients it rebuilds)."""
    if not placements:
        return
    conn.execute(
        update(PROM_RESPONSES)
        .where(PROM_RESPONSES.c.source == bindparam("src"), PROM_RESPONSES.c.id == bindparam("rid"))
        .values(case_id=bindparam("cid"), timepoint=bindparam("tp")),
        [{"src": s, "rid": r, "cid": c, "tp": t} for s, r, c, t in placements],
    )



def most_cases_changed_since(conn: Connection, since: datetime) -> bool:
    """Whether at least half the cases were updated at or after ``since`` (a backfill, a full
    remap). An after-store refresh then redoes every case, chunk by chunk, rather than
    collecting the ids of the changed ones first: the same result (a refresh of an unchanged
    case changes nothing), with memory that does not grow with the store."""
    changed = conn.execute(select(func.count()).select_from(CASES).where(CASES.c.updated_at >= since))
    total = conn.execute(select(func.count()).select_from(CASES)).scalar_one()
    return bool(total) and 2 * changed.scalar_one() >= total
