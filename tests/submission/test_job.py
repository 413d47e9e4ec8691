"""The daemon's quarterly submission job: its schedule, a run, and the lock rule."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from registry_adapter.app import App
from registry_store.leases import job_lock
from registry_store.submissions import SUBMISSIONS
from scheduler import jobs
from scheduler.daemon import Daemon, desired_jobs
from tests.conftest import SAMPLE_FEED
from tests.submission.conftest import ingest


class FixedClock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def sleep(self, seconds: float) -> None:  # pragma: no cover - not used by the job
        pass


def test_default_schedule_is_15_days_after_each_quarter(make_app: Callable[..., App]) -> None:
    app = make_app()
    trigger = desired_jobs(app)[jobs.SUBMISSION_JOB]["trigger"]
    after = datetime(2025, 10, 1, tzinfo=UTC)
    first = trigger.get_next_fire_time(None, after)
    assert first == datetime(2025, 10, 15, 3, 0, tzinfo=UTC)
    assert trigger.get_next_fire_time(first, first.replace(minute=1)) == datetime(
        2026, 1, 15, 3, 0, tzinfo=UTC
    )


def test_job_submits_last_quarter_and_skips_when_another_holds_the_lock(
    make_app: Callable[..., App], tmp_path: Path
) -> None:
    app = make_app(submission={"folder": str(tmp_path / "drop")})
    ingest(app, SAMPLE_FEED)
    jobs.bind(app, FixedClock(datetime(2025, 1, 15, 3, 0, tzinfo=UTC)))  # type: ignore[arg-type]
    with job_lock(app.engine, "submission", 60) as held:
        assert held is not None
        jobs.submission()  # another process is submitting: skipped, nothing sent
    with app.engine.connect() as conn:
        assert conn.execute(select(SUBMISSIONS.c.id)).first() is None
    jobs.submission()
    with app.engine.connect() as conn:
        rows = conn.execute(select(SUBMISSIONS.c.period, SUBMISSIONS.c.counts)).all()
    assert [r.period for r in rows] == ["2024Q4"] and rows[0].counts["new"] > 0
    assert len(list((tmp_path / "drop").glob("*.zip"))) == 1


def test_disabled_schedule_removes_the_stored_job(make_app: Callable[..., App]) -> None:
    app = make_app()
    d = Daemon(app)
    d.scheduler.start(paused=True)
    assert d.ensure_jobs()[jobs.SUBMISSION_JOB] == "added"
    d.stop()
    off = make_app(submission={"schedule": {"enabled": False}})
    d = Daemon(off)
    d.scheduler.start(paused=True)
    assert d.ensure_jobs()[jobs.SUBMISSION_JOB] == "removed"
    assert d.scheduler.get_job(jobs.SUBMISSION_JOB) is None
    d.stop()


def test_nightly_job_refreshes_case_outcomes(make_app: Callable[..., App]) -> None:
    from registry_store.tables import CASE_OUTCOMES

    app = make_app()  # its source is the sample feed
    jobs.bind(app)
    jobs.nightly()
    with app.engine.connect() as conn:
        stored = dict(conn.execute(select(CASE_OUTCOMES.c.case_id, CASE_OUTCOMES.c.outcomes)).all())
    assert len(stored) == 40 and stored["sample:proc-0001"]["definitions_version"] == "2026.1"
