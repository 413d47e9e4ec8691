"""``registry-adapter worker``: map staged records side by side with other workers.

Several worker processes, on one host or several, share one PostgreSQL store; PostgreSQL is
the only coordinator. Each worker repeatedly claims the oldest batch of pending staged records
no other transaction holds (``SELECT … FOR UPDATE SKIP LOCKED``), maps it and writes its
registry rows, errors and statuses in that same transaction, so a batch is mapped by exactly
one worker and a worker killed mid-batch only releases its claim (the rows stay pending for
the others). When nothing is pending, workers drain the case queue the same way (patients
claimed with ``SKIP LOCKED``, assembled, dequeued in one transaction). Syncs and sources keep
their leases; with workers running, ``import``/``sync`` may stage only and ``reprocess
--no-map`` only marks records pending, leaving the mapping to the workers.

On SQLite there are no row locks: run one worker there.
"""

from __future__ import annotations

import threading

import structlog
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from registry_adapter.mapping_pool import StagedForMapping, as_plain
from registry_adapter.pipeline import _MAP_COLUMNS, Pipeline, Prepared, RunCounts
from registry_store.case_queue import claim_queued
from registry_store.leases import WORKER_LOCK_PREFIX, job_lock, others_alive, worker_lock_name
from registry_store.tables import STAGING

log = structlog.get_logger(__name__)
_RETRIES = 5


def _claim_and_map(pipeline: Pipeline, counts: RunCounts, batch_size: int, after: int = 0) -> int:
    """Claim, map and write one batch of pending records with ids above ``after``; returns the
    highest id it held (0: none pending there)."""
    failed: list[Prepared] = []
    with pipeline.app.engine.begin() as conn:
        query = (
            select(*_MAP_COLUMNS)
            .where(STAGING.c.status == "pending", STAGING.c.id > after)
            .order_by(STAGING.c.id)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
        )
        rows: list[StagedForMapping] = [as_plain(r) for r in conn.execute(query)]
        if not rows:
            return 0
        verdicts = pipeline._known_verdicts(rows, conn)
        prepared = [pipeline._prepare(row, verdicts) for row in rows]
        try:
            with conn.begin_nested():
                counts.add(pipeline._write(conn, prepared))
        except Exception:
            failed = prepared
    # Outside the claim (its locks are released): record by record, as map_pending does.
    for one in failed:
        counts.add(pipeline._write_alone(one))
    pipeline.progress("mapping", counts.as_dict())
    return rows[-1].id


def _drain_cases(pipeline: Pipeline, chunk: int = 200) -> int:
    """Assemble queued patients, ``chunk`` a transaction, until none is left unclaimed.

    A chunk can meet another worker's batch writing the same patients' rows; should PostgreSQL
    break the tie (a deadlock or serialization error), that chunk rolls back, stays queued and
    is tried again (up to ``_RETRIES`` times in a row, then the error stands)."""
    total = 0
    failures = 0
    while True:
        try:
            with pipeline.app.engine.begin() as conn:
                pairs = claim_queued(conn, chunk)
                if not pairs:
                    return total
                assembled = pipeline.assemble_and_dequeue(conn, pairs)
        except DBAPIError as exc:
            failures += 1
            log.warning("worker.assembly_retried", error=type(exc.orig).__name__, attempt=failures)
            if failures > _RETRIES:
                raise
            continue
        failures = 0
        total += assembled


def run_registered(
    pipeline: Pipeline,
    *,
    until_idle: bool = False,
    poll_seconds: float = 5.0,
    stop: threading.Event | None = None,
    ttl_seconds: float = 60.0,
) -> tuple[RunCounts, bool, bool]:
    """``run_worker`` under a lease naming this worker; returns its counts, whether no other
    worker was still running when it stopped, and whether another was running when it started.

    The last worker to stop is the one to run the after-store plug-ins (case outcomes,
    reminders) for everyone: it releases its lease before looking, so of workers stopping
    together at least the last sees none left, and it runs them after every other worker's
    writes. N workers running them each would redo the same refresh N times, each queueing on
    the others' row locks. Its refresh covers what was written since it started, unless
    another worker was running then: that one's writes (and those of any worker it outlived)
    may be older, so everything is refreshed."""
    engine = pipeline.app.engine
    name = worker_lock_name()
    with job_lock(engine, name, ttl_seconds):
        others_at_start = others_alive(engine, WORKER_LOCK_PREFIX, besides=name)
        counts = run_worker(pipeline, until_idle=until_idle, poll_seconds=poll_seconds, stop=stop)
    return counts, not others_alive(engine, WORKER_LOCK_PREFIX), others_at_start


def run_worker(
    pipeline: Pipeline,
    *,
    until_idle: bool = False,
    poll_seconds: float = 5.0,
    stop: threading.Event | None = None,
) -> RunCounts:
    """Map pending records until stopped (or, ``until_idle``, until none is pending)."""
    counts = RunCounts()
    stop = stop or threading.Event()
    # Claims go forward from the last one: the (status, id) index still holds entries of rows
    # mapped moments ago (PostgreSQL keeps them until vacuum), and starting from the lowest id
    # every time would walk them all on every claim. Records re-staged at lower ids (a v2
    # message re-converted) are found when a forward claim comes back empty.
    after = 0
    while not stop.is_set():
        last = _claim_and_map(pipeline, counts, pipeline.batch_size, after)
        if last:
            after = last
            continue
        if after:
            after = 0
            continue
        counts.cases += _drain_cases(pipeline)
        if until_idle:
            # Another worker may still be writing a batch that queues patients: one more look.
            if _claim_and_map(pipeline, counts, pipeline.batch_size):
                continue
            counts.cases += _drain_cases(pipeline)
            break
        stop.wait(poll_seconds)
    log.info("worker.stopped", **counts.as_dict())
    return counts
