"""``registry-adapter run``: the scheduler daemon and the background services beside it.

APScheduler 3.x (BackgroundScheduler, in UTC) with a persistent SQLAlchemyJobStore in the
registry database, holding two jobs: the nightly sync (+ case assembly + reminder planning)
and the reminder dispatch every ``dispatch_interval_minutes``. The pitfalls measured in
libraries.md section 4 decide how jobs are registered:

- jobs are added only when absent, never with ``replace_existing`` (which recomputes the
  next run from now and silently drops a run missed while the host was down);
- each job is stored with ``misfire_grace_time`` and ``coalesce=True`` (the 1 s default
  would drop it), so after downtime a missed run happens once at start; options stored
  with an existing job are updated in place when the configuration changed (stored jobs
  keep the options they were added with), and a changed trigger keeps a missed run;
- the scheduler runs in UTC; a nightly time in a local zone uses a DST-safe trigger;
- missed and failed runs are logged (EVENT_JOB_MISSED / EVENT_JOB_ERROR).

APScheduler does not coordinate schedulers sharing a job store, so each job also takes a
database lease (registry_store/leases.py): two daemons on one PostgreSQL database never run the
same job at once. SIGTERM/SIGINT stop the daemon cleanly: services stop, running jobs
finish. After a ``kill -9`` the next start finds the dead process's leases: its sync runs
are marked ``interrupted`` and an interrupted nightly run is run again at once.

Other background services (the MLLP listener, the review web UI) plug in as
:class:`Service` objects: pass them to :class:`Daemon`, or let ``run`` find them through the
``spine_registry_adapter.services`` entry points (each names a ``make_service(app) -> Service
| None``, returning None when the service is not configured).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from types import FrameType
from typing import Any, Protocol

import structlog
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from registry_adapter.app import App
from registry_adapter.extras import extra_for
from registry_adapter.plugins import SERVICES, plugins
from registry_adapter.submission.settings import SubmissionSettings
from registry_types import metrics
from scheduler import jobs
from scheduler.clock import Clock
from scheduler.dispatcher import Dispatcher
from scheduler.planner import check_configuration
from scheduler.settings import SchedulerSettings

log = structlog.get_logger(__name__)

# Interval runs are aligned to this origin, so an hourly dispatch runs at :00 wherever it starts.
_INTERVAL_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)
# How often the main thread looks at the signal flag (stop latency on SIGTERM).
_SIGNAL_POLL_SECONDS = 0.25


class Service(Protocol):
    """A background service run beside the scheduler (MLLP listener, web UI, ...).

    ``start`` must return once the service runs (in its own threads); ``stop`` must return
    once it has stopped.
    """

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


def discover_services(app: App) -> list[Service]:
    """The configured background services of the installed plug-ins, by entry point name."""
    found: list[Service] = []
    for plugin in plugins(SERVICES):
        try:
            factory = plugin.load()
        except ModuleNotFoundError as exc:
            if extra_for(exc) is None:
                raise
            continue  # that service needs an extra that is not installed
        if not callable(factory):
            raise TypeError(f"entry point {plugin.name} = {plugin.value} is not a make_service function")
        service = factory(app)
        if service is not None:
            found.append(service)
    return found


def desired_jobs(app: App) -> dict[str, dict[str, Any]]:
    s = app.settings.section(SchedulerSettings)
    wanted = {
        jobs.NIGHTLY_JOB: {
            "func": "scheduler.jobs:nightly",
            "trigger": jobs.nightly_trigger(s.nightly.cron, s.nightly.timezone),
            "name": "nightly sync, case assembly, reminder planning",
        },
        jobs.DISPATCH_JOB: {
            "func": "scheduler.jobs:dispatch",
            "trigger": IntervalTrigger(
                minutes=s.dispatch_interval_minutes, start_date=_INTERVAL_ORIGIN, timezone=UTC
            ),
            "name": "reminder planning and dispatch",
        },
    }
    schedule = app.settings.section(SubmissionSettings).schedule
    if schedule.enabled:
        wanted[jobs.SUBMISSION_JOB] = {
            "func": "scheduler.jobs:submission",
            "trigger": jobs.nightly_trigger(schedule.cron, schedule.timezone),
            "name": "registry submission (last complete quarter)",
        }
    return wanted


class Daemon:
    def __init__(self, app: App, services: Iterable[Service] = (), clock: Clock | None = None) -> None:
        self.app = app
        self.services = list(services)
        self.clock = clock
        self.stopping = threading.Event()
        self._signal: int | None = None
        self.scheduler = self._build_scheduler()
        self._started: list[Service] = []

    def _build_scheduler(self) -> BackgroundScheduler:
        s = self.app.settings.section(SchedulerSettings)
        store = SQLAlchemyJobStore(engine=self.app.engine, tablename=s.jobstore_table)
        scheduler = BackgroundScheduler(
            jobstores={"default": store},
            executors={"default": ThreadPoolExecutor(max_workers=2)},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": s.misfire_grace_seconds,
            },
            timezone=UTC,
        )
        scheduler.add_listener(self._on_event, EVENT_JOB_MISSED | EVENT_JOB_ERROR | EVENT_JOB_EXECUTED)
        return scheduler

    def _on_event(self, event: JobExecutionEvent) -> None:
        run_at = event.scheduled_run_time.isoformat() if event.scheduled_run_time else None
        if event.code == EVENT_JOB_MISSED:
            metrics.observe_job(event.job_id, "missed")
            log.warning("job.missed", job=event.job_id, scheduled=run_at)
        elif event.code == EVENT_JOB_ERROR:
            metrics.observe_job(event.job_id, "failed")
            log.error("job.failed", job=event.job_id, scheduled=run_at, error=type(event.exception).__name__)
        else:
            metrics.observe_job(event.job_id, "succeeded")
            log.info("job.executed", job=event.job_id, scheduled=run_at)

    def ensure_jobs(self) -> dict[str, str]:
        """Add missing jobs and bring stored options up to date, without losing missed runs."""
        grace = self.app.settings.section(SchedulerSettings).misfire_grace_seconds
        options = {"coalesce": True, "max_instances": 1, "misfire_grace_time": grace}
        done: dict[str, str] = {}
        desired = desired_jobs(self.app)
        # A schedule switched off in the config takes its stored job away.
        if jobs.SUBMISSION_JOB not in desired and self.scheduler.get_job(jobs.SUBMISSION_JOB) is not None:
            self.scheduler.remove_job(jobs.SUBMISSION_JOB)
            done[jobs.SUBMISSION_JOB] = "removed"
        for job_id, spec in desired.items():
            job = self.scheduler.get_job(job_id)
            if job is None:
                self.scheduler.add_job(
                    spec["func"],
                    spec["trigger"],
                    id=job_id,
                    name=spec["name"],
                    replace_existing=False,
                    **options,
                )
                done[job_id] = "added"
                continue
            changes: dict[str, Any] = {k: v for k, v in options.items() if getattr(job, k) != v}
            if spec["func"] != job.func_ref:
                changes["func"] = spec["func"]
            if changes:
                self.scheduler.modify_job(job_id, **changes)
            trigger: BaseTrigger = spec["trigger"]
            if repr(trigger) != repr(job.trigger):
                now = datetime.now(UTC)
                if job.next_run_time is not None and job.next_run_time <= now:
                    # A run is overdue: keep it (it runs once now), later runs follow the new trigger.
                    self.scheduler.modify_job(job_id, trigger=trigger)
                else:
                    self.scheduler.reschedule_job(job_id, trigger=trigger)
                changes["trigger"] = str(trigger)
            done[job_id] = "updated" if changes else "kept"
        return done

    def start(self) -> None:
        # A configuration mistake stops the daemon at start, not as an error every hour.
        check_configuration(self.app.settings, [i.id for i in self.app.instruments])
        jobs.bind(self.app, self.clock)
        # Planned now, not at the first dispatch an hour away: the UI shows today's reminders.
        Dispatcher(self.app, self.clock).plan()
        # Paused: the stored jobs are visible for ensure_jobs before any of them is processed.
        self.scheduler.start(paused=True)
        outcome = self.ensure_jobs()
        if jobs.recover_abandoned(self.app):
            # The nightly run was killed mid-way; APScheduler already counted it as done.
            self.scheduler.modify_job(jobs.NIGHTLY_JOB, next_run_time=datetime.now(UTC))
            outcome[jobs.NIGHTLY_JOB] = "re-run (interrupted)"
        for job in self.scheduler.get_jobs():
            log.info(
                "job.registered",
                job=job.id,
                outcome=outcome.get(job.id, "kept"),
                next_run=job.next_run_time.isoformat() if job.next_run_time else None,
            )
        self.scheduler.resume()
        for service in self.services:
            service.start()
            self._started.append(service)
            log.info("service.started", service=service.name)
        log.info("daemon.started", services=[s.name for s in self._started])

    def stop(self) -> None:
        for service in reversed(self._started):
            try:
                service.stop()
                log.info("service.stopped", service=service.name)
            except Exception:
                log.exception("service.stop_failed", service=service.name)
        self._started.clear()
        if self.scheduler.running:
            # APScheduler 3.11's loop processes due jobs once more *after* shutdown() has shut
            # the executors: a job due at that moment is advanced to its next time without
            # running (a lost run). Detaching the job store first (its rows stay in the
            # database) leaves that last pass nothing to touch.
            self.scheduler.pause()
            self.scheduler.remove_jobstore("default", shutdown=True)
            # wait=True: a running job finishes its transaction instead of being cut off.
            self.scheduler.shutdown(wait=True)
        log.info("daemon.stopped")

    def request_stop(self) -> None:
        """Stop the daemon (from any thread; signals use :meth:`_on_signal`)."""
        self.stopping.set()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only a plain assignment: a handler runs between two bytecodes of the main thread,
        # which may hold the log's write lock or the Event's lock at that moment; logging or
        # Event.set() here can deadlock (seen: a SIGTERM during a log write hung the daemon).
        self._signal = signum

    def run_forever(self, *, install_signals: bool = True) -> int:
        if install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self.start()
        try:
            while self._signal is None and not self.stopping.wait(_SIGNAL_POLL_SECONDS):
                pass
            if self._signal is not None:
                log.info("daemon.signal", signal=signal.Signals(self._signal).name)
        finally:
            self.stop()
        return 0
