"""The durable queue of patients whose cases are to be assembled again.

Mapping batches enqueue the patients they touch (one multi-row insert, duplicates ignored) in
the batch's own transaction; ``Pipeline.map_pending`` drains the queue once at the end, so a
patient whose procedures, stay, diagnoses and PROMs arrive in five batches is assembled once,
not five times. Rows leave the queue in the transaction that assembled them: a crash in between
leaves them queued, and the next mapping run assembles them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from sqlalchemy import and_, or_, select, tuple_
from sqlalchemy.engine import Connection

from registry_store.db import upsert
from registry_store.tables import CASE_QUEUE as QUEUE


def enqueue(conn: Connection, touched: Mapping[str, Iterable[str]]) -> None:
    """Queue these patients. An already queued one is updated (to itself), not skipped: the
    update waits for a worker that is assembling that patient right now (it holds the row,
    ``claim_queued``) and then re-queues them, so the rows this transaction writes are
    assembled again after it commits rather than lost to an assembly that read before them."""
    # In key order, as claim_queued locks them: two transactions never wait on each other crosswise.
    pairs = sorted({(s, p) for s, patients in touched.items() for p in patients if p})
    rows = [{"source": s, "patient_id": p} for s, p in pairs]
    for start in range(0, len(rows), 1000):
        upsert(conn, QUEUE, rows[start : start + 1000], keys=["source", "patient_id"], update=["patient_id"])


def queued(conn: Connection, limit: int, after: tuple[str, str] | None = None) -> list[tuple[str, str]]:
    """Up to ``limit`` queued (source, patient id) pairs in key order, after ``after``: the
    queue is read a chunk at a time, since after a backfill it holds every patient."""
    query = select(QUEUE.c.source, QUEUE.c.patient_id).order_by(QUEUE.c.source, QUEUE.c.patient_id)
    if after is not None:
        query = query.where(tuple_(QUEUE.c.source, QUEUE.c.patient_id) > tuple_(*after))
    return [(r.source, r.patient_id) for r in conn.execute(query.limit(limit))]


def dequeue(conn: Connection, pairs: Sequence[tuple[str, str]]) -> None:
    for start in range(0, len(pairs), 400):
        chunk = pairs[start : start + 400]
        by_source: dict[str, list[str]] = {}
        for source, patient in chunk:
            by_source.setdefault(source, []).append(patient)
        conn.execute(
            QUEUE.delete().where(
                or_(*(and_(QUEUE.c.source == s, QUEUE.c.patient_id.in_(ps)) for s, ps in by_source.items()))
            )
        )


def claim_queued(conn: Connection, limit: int) -> list[tuple[str, str]]:
    """Up to ``limit`` queued patients no other transaction holds, locked until the caller's
    transaction ends (PostgreSQL ``FOR UPDATE SKIP LOCKED``: several workers drain the queue
    side by side without assembling one patient twice at once)."""
    rows = conn.execute(
        select(QUEUE.c.source, QUEUE.c.patient_id)
        .order_by(QUEUE.c.source, QUEUE.c.patient_id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [(r.source, r.patient_id) for r in rows]
