"""``/healthz``: each component's state, and the overall one.

A component is ``ok``, ``down`` or ``off`` (not configured, or not yet started here); any
``down`` makes the whole ``down`` and the answer a 503. Every figure is read where it is
true for all processes sharing the store, so ``registry-adapter serve`` in one process
reports on the daemon in another:

- database: ``SELECT 1``;
- scheduler: the jobs in APScheduler's job table; a job whose next run is more than
  ``SCHEDULER_GRACE`` past means no scheduler is running them;
- listener: a TCP connect to each configured MLLP listener (its address as configured;
  a wildcard address is tried on loopback);
- nightly: age of the newest successful sync run of the pulled sources, down past
  ``review.health_nightly_max_age_hours``; ``waiting`` until the first run.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from registry_adapter.app import App
from registry_adapter.feeds import is_pulled
from registry_adapter.feeds.mllp import MllpSource
from registry_store.tables import SYNC_RUNS
from review.queries import as_utc, next_job_runs
from review.settings import ReviewSettings
from scheduler.settings import SchedulerSettings

# A due job is picked up within a second by a running scheduler; minutes late means none is.
SCHEDULER_GRACE = 300.0
CONNECT_TIMEOUT = 2.0

Component = dict[str, Any]


def _database(app: App) -> Component:
    with app.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return {"status": "ok"}


def _scheduler(app: App, now: datetime) -> Component:
    with app.engine.connect() as conn:
        runs = next_job_runs(conn, app.settings.section(SchedulerSettings).jobstore_table)
    if not runs:
        return {"status": "off", "detail": "no scheduled jobs (registry-adapter run has not started)"}
    overdue = {
        job: round(now.timestamp() - at)
        for job, at in runs.items()
        if at is not None and now.timestamp() - at > SCHEDULER_GRACE
    }
    if overdue:
        return {"status": "down", "overdue_seconds": overdue}
    return {"status": "ok", "next_run": {j: _iso(at) for j, at in runs.items()}}


def _nightly(app: App, now: datetime) -> Component:
    pulled = [s.name for s in app.settings.sources if is_pulled(s)]
    if not pulled:
        return {"status": "off", "detail": "no pulled sources configured"}
    with app.engine.connect() as conn:
        last = conn.execute(
            select(func.max(SYNC_RUNS.c.finished_at)).where(
                SYNC_RUNS.c.outcome == "succeeded", SYNC_RUNS.c.source.in_(pulled)
            )
        ).scalar_one()
    finished = as_utc(last)
    if finished is None:
        return {"status": "waiting", "detail": "no successful sync run yet"}
    age = (now - finished).total_seconds()
    limit = app.settings.section(ReviewSettings).health_nightly_max_age_hours * 3600
    return {"status": "down" if age > limit else "ok", "age_seconds": round(age)}


async def _listener(app: App) -> Component:
    listeners = [s for s in app.settings.sources if isinstance(s, MllpSource)]
    if not listeners:
        return {"status": "off", "detail": "no MLLP source configured"}
    down = []
    for cfg in listeners:
        host = "127.0.0.1" if cfg.host in ("0.0.0.0", "", "::") else cfg.host
        try:
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, cfg.port), CONNECT_TIMEOUT)
        except (OSError, TimeoutError):
            down.append(cfg.name)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if down:
        return {"status": "down", "not_listening": down}
    return {"status": "ok"}


def _iso(at: float | None) -> str | None:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds") if at is not None else None


async def check(app: App) -> tuple[bool, dict[str, Any]]:
    """(healthy, report). Database reads run in worker threads, off the event loop."""
    now = datetime.now(UTC)
    components: dict[str, Component] = {}
    try:
        components["database"] = await anyio.to_thread.run_sync(_database, app)
    except SQLAlchemyError as exc:
        # The type only: driver messages can quote connection strings.
        components["database"] = {"status": "down", "error": type(exc).__name__}
    if components["database"]["status"] == "ok":
        for name, probe in (("scheduler", _scheduler), ("nightly", _nightly)):
            try:
                components[name] = await anyio.to_thread.run_sync(probe, app, now)
            except SQLAlchemyError as exc:
                components[name] = {"status": "down", "error": type(exc).__name__}
    else:
        components["scheduler"] = components["nightly"] = {"status": "unknown", "detail": "database down"}
    components["listener"] = await _listener(app)
    healthy = all(c["status"] != "down" for c in components.values())
    return healthy, {"status": "ok" if healthy else "down", "components": components}
