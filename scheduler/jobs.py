"""The scheduled jobs and the DST-safe trigger they may use.

APScheduler's SQLAlchemyJobStore pickles each job as an importable ``module:function``
reference plus its arguments, so the jobs take no arguments at all: the daemon binds the
App (settings, engine) to this module once at start, and nothing about the site (secrets,
paths) ever lands in the job table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

from registry_adapter import logs
from registry_adapter.app import App
from registry_store.leases import SYNC_LOCK_PREFIX, Holder, holders, job_lock, release_holder
from scheduler.clock import Clock, SystemClock
from scheduler.settings import SchedulerSettings

log = structlog.get_logger(__name__)

NIGHTLY_JOB = "nightly-sync"
DISPATCH_JOB = "reminders-dispatch"
SUBMISSION_JOB = "registry-submission"
NIGHTLY_LOCK = "nightly"


@dataclass
class _Runtime:
    app: App
    clock: Clock


_runtime: _Runtime | None = None


def bind(app: App, clock: Clock | None = None) -> None:
    global _runtime
    _runtime = _Runtime(app, clock or SystemClock())


def _bound() -> _Runtime:
    if _runtime is None:
        raise RuntimeError("scheduler.jobs.bind(app) was not called before a job ran")
    return _runtime


def refresh_mappings(app: App, job: str) -> None:
    """Pick up code maps and mappings edited since the last run (the review UI adds codes
    from its own process; staff edit the files). A broken edit keeps the previous, working
    versions for this run (logged; retried next run) instead of failing the whole job."""
    from mappings.codemaps import CodeMapError
    from mappings.engine import MappingFileError

    try:
        if app.reload_mappings_if_changed():
            log.info("job.mappings_reloaded", job=job)
    except (CodeMapError, MappingFileError) as exc:
        # File names, line numbers and codes only: code map and mapping files hold no PHI.
        log.error("job.mappings_reload_failed", job=job, error=str(exc)[:2000])


def abandon(app: App, holder: Holder) -> bool:
    """Release a lease whose holder is gone; a sync lease's run left ``running`` becomes
    ``interrupted``. False when the holder no longer held it (someone took it meanwhile)."""
    from registry_store.sync_runs import mark_runs_interrupted

    if not release_holder(app.engine, holder):
        return False
    if holder.name.startswith(SYNC_LOCK_PREFIX):
        with app.engine.begin() as conn:
            runs = mark_runs_interrupted(conn, holder.name.removeprefix(SYNC_LOCK_PREFIX))
        log.warning("sync.interrupted_runs", lock=holder.name, runs=runs, holder_pid=holder.pid)
    return True


def recover_abandoned(app: App, clock: Clock | None = None) -> bool:
    """Clean up after processes that died holding leases (``kill -9`` mid-sync); True when
    the nightly job was among them, so it must run again.

    Sync leases of gone holders are released and their runs marked ``interrupted``; the
    nightly lease stays until the re-run takes it over, so a second crash before the re-run
    still leaves the sign that one is owed."""
    now = (clock or SystemClock()).now()
    rerun = False
    for holder in holders(app.engine):
        why = holder.gone(now)
        if why is None:
            continue
        log.warning("lock.abandoned", lock=holder.name, host=holder.host, pid=holder.pid, reason=why)
        if holder.name == NIGHTLY_LOCK:
            rerun = True
        elif holder.name.startswith(SYNC_LOCK_PREFIX):
            abandon(app, holder)
    return rerun


def nightly() -> None:
    """Sync every configured source (each maps and assembles its cases), map what other
    intake (the MLLP listener) staged, then re-plan reminders."""
    from adapters.base import SourceContext
    from registry_adapter.pipeline import Pipeline
    from registry_adapter.sources import build_source, is_pulled
    from scheduler.dispatcher import Dispatcher

    rt = _bound()
    app = rt.app
    with job_lock(app.engine, NIGHTLY_LOCK, app.settings.section(SchedulerSettings).lock_ttl_seconds) as lock:
        if lock is None:
            log.info("job.skipped", job=NIGHTLY_JOB, reason="another process holds the lock")
            return
        refresh_mappings(app, NIGHTLY_JOB)
        pipeline = Pipeline(app)
        failed = []
        for cfg in app.settings.sources:
            if not is_pulled(cfg):
                continue  # pushed to, not pulled: the daemon runs the listener as a service
            try:
                pipeline.ingest(build_source(cfg, app), SourceContext())
            except Exception as exc:
                # One broken source must not keep the others (or reminder planning) from running;
                # the sync run row holds the error. Only the type here: messages of third-party
                # errors can carry request details.
                failed.append(cfg.name)
                log.error("job.source_failed", job=NIGHTLY_JOB, source=cfg.name, **logs.failure_fields(exc))
        pipeline.map_pending()
        Dispatcher(app, rt.clock).plan()
        refresh_case_outcomes(app)
        log.info("job.done", job=NIGHTLY_JOB, failed_sources=failed)


def refresh_case_outcomes(app: App) -> None:
    """Recompute every case's outcomes after the night's data (late readmissions included), so
    the case pages show them before the next submission; a failure is logged, never fatal to
    the nightly job (submission and measures recompute them anyway)."""
    from registry_adapter.submission.service import store_outcomes

    try:
        with app.engine.begin() as conn:
            cases = store_outcomes(conn, app)
        log.info("job.outcomes_refreshed", job=NIGHTLY_JOB, cases=cases)
    except Exception as exc:
        log.error("job.outcomes_refresh_failed", job=NIGHTLY_JOB, **logs.failure_fields(exc))


def dispatch() -> None:
    """Plan and send due reminders (the dispatcher takes its own lock). No mapping reload
    here: dispatch maps nothing, and the nightly job reloads before it maps."""
    from scheduler.dispatcher import Dispatcher

    rt = _bound()
    Dispatcher(rt.app, rt.clock).run()


def submission() -> None:
    """Submit the last complete quarter to the registry (delta since the last package).

    Same rules as the nightly job: a lease (the ``submission`` lock, held by
    ``run_submission``) so two processes never submit at once, and a run another process is
    already doing is skipped, not queued; coalescing and the misfire grace come from the
    daemon's job options. A failed delivery records nothing and raises, so the job is logged
    as failed and the next run sends the same delta again.
    """
    from registry_adapter.submission.service import SubmissionBusy, run_submission

    rt = _bound()
    app = rt.app
    refresh_mappings(app, SUBMISSION_JOB)
    try:
        result = run_submission(app, today=rt.clock.now().astimezone(app.site.tz).date())
    except SubmissionBusy:
        log.info("job.skipped", job=SUBMISSION_JOB, reason="another process holds the lock")
        return
    log.info("job.done", job=SUBMISSION_JOB, period=result.period, package=result.package, **result.counts)


class WallClockCronTrigger(BaseTrigger):
    """A crontab evaluated on the local wall clock of ``timezone``, DST-safe.

    APScheduler 3.11's CronTrigger in a DST zone skips a 00:xx run after spring-forward and
    runs a 01:xx job twice on fall-back (libraries.md 4.3). Here the crontab is matched
    against wall-clock time as if it were UTC (no gaps, no repeats) and only the result is
    placed in the zone: every matching local day fires exactly once; a time that does not
    exist (02:30 on spring-forward) fires an hour later, a repeated one fires on its first
    occurrence.
    """

    def __init__(self, expr: str, timezone: str | tzinfo) -> None:
        self._setup(expr, timezone)

    def _setup(self, expr: str, timezone: str | tzinfo) -> None:
        self.expr = expr
        self.timezone = timezone if isinstance(timezone, tzinfo) else ZoneInfo(timezone)
        self._wall = CronTrigger.from_crontab(expr, timezone=UTC)

    def _to_wall(self, at: datetime) -> datetime:
        return at.astimezone(self.timezone).replace(tzinfo=UTC, fold=0)

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        prev = self._to_wall(previous_fire_time) if previous_fire_time else None
        nxt = self._wall.get_next_fire_time(prev, self._to_wall(now))
        if nxt is None:
            return None
        # Through UTC so a wall time inside a DST gap comes back as the real instant (03:30).
        return nxt.replace(tzinfo=self.timezone, fold=0).astimezone(UTC).astimezone(self.timezone)

    def __getstate__(self) -> dict[str, Any]:
        return {"version": 1, "expr": self.expr, "timezone": str(self.timezone)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._setup(state["expr"], state["timezone"])

    def __str__(self) -> str:
        return f"wallclock-cron[{self.expr} {self.timezone}]"

    def __repr__(self) -> str:
        return f"<WallClockCronTrigger (expr={self.expr!r}, timezone={str(self.timezone)!r})>"


def nightly_trigger(cron: str, timezone: str) -> BaseTrigger:
    if timezone in ("UTC", "Etc/UTC"):
        return CronTrigger.from_crontab(cron, timezone=UTC)
    return WallClockCronTrigger(cron, timezone)
