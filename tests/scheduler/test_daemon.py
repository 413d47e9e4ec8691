"""The scheduler daemon: DST-safe nightly trigger, missed runs after downtime, stored job
options, job locks across processes (SQLite and PostgreSQL), SIGTERM shutdown."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import text

from registry_adapter.app import App
from registry_store.leases import LeaseLock, job_lock
from scheduler import jobs
from scheduler.clock import FixedClock
from scheduler.daemon import Daemon
from tests.conftest import base_config

ROOT = Path(__file__).resolve().parents[2]
CHICAGO = ZoneInfo("America/Chicago")


# -- DST-safe nightly trigger ----------------------------------------------------------------------


def fire_times(trigger: Any, start: datetime, end: datetime) -> list[datetime]:
    out: list[datetime] = []
    prev = None
    now = start
    while True:
        nxt = trigger.get_next_fire_time(prev, now)
        if nxt is None or nxt > end:
            return out
        out.append(nxt.astimezone(CHICAGO))
        prev, now = nxt, nxt


@pytest.mark.parametrize("hhmm", ["15 0", "30 1", "30 2", "0 3"])
@pytest.mark.parametrize("transition", [date(2025, 3, 9), date(2025, 11, 2)])
def test_wall_clock_trigger_fires_once_per_local_day_across_dst(hhmm: str, transition: date) -> None:
    trigger = jobs.nightly_trigger(f"{hhmm} * * *", "America/Chicago")
    start = datetime.combine(transition - timedelta(days=3), datetime.min.time(), CHICAGO)
    end = start + timedelta(days=7)
    runs = fire_times(trigger, start, end)
    assert [r.date() for r in runs] == [start.date() + timedelta(days=i) for i in range(7)]
    minute, hour = (int(x) for x in hhmm.split())
    for r in runs:
        if r.date() == transition and transition.month == 3 and hour == 2:
            assert (r.hour, r.minute) == (3, minute)  # 02:30 does not exist that day: an hour later
        else:
            assert (r.hour, r.minute) == (hour, minute)
    # APScheduler's own CronTrigger in the zone gets at least one of these wrong (libraries.md 4.3).
    if (hhmm, transition.month) in (("15 0", 3), ("30 1", 11)):
        plain = fire_times(CronTrigger.from_crontab(f"{hhmm} * * *", timezone=CHICAGO), start, end)
        assert len(plain) != 7 or len({r.date() for r in plain}) != 7


def test_wall_clock_trigger_survives_pickling() -> None:
    import pickle

    trigger = jobs.WallClockCronTrigger("30 4 * * 1-5", "Europe/Berlin")
    again = pickle.loads(pickle.dumps(trigger))
    now = datetime(2025, 3, 28, 12, tzinfo=UTC)  # a Friday; Monday 31 is after Berlin's switch
    assert again.get_next_fire_time(None, now) == trigger.get_next_fire_time(None, now)
    assert again.get_next_fire_time(None, now).astimezone(ZoneInfo("Europe/Berlin")).hour == 4


# -- missed runs and stored options ----------------------------------------------------------------


def watch(daemon: Daemon) -> tuple[list[tuple[int, str]], threading.Event]:
    seen: list[tuple[int, str]] = []
    done = threading.Event()

    def listener(event: JobExecutionEvent) -> None:
        seen.append((event.code, event.job_id))
        if event.job_id == jobs.NIGHTLY_JOB:
            done.set()

    daemon.scheduler.add_listener(listener, EVENT_JOB_EXECUTED | EVENT_JOB_MISSED)
    return seen, done


def leave_overdue(app: App, hours_late: float) -> None:
    """A first daemon registers the jobs; the host 'goes down' with the nightly run ahead."""
    d = Daemon(app)
    d.scheduler.start(paused=True)
    assert d.ensure_jobs() == {
        jobs.NIGHTLY_JOB: "added",
        jobs.DISPATCH_JOB: "added",
        jobs.SUBMISSION_JOB: "added",
    }
    d.scheduler.modify_job(jobs.NIGHTLY_JOB, next_run_time=datetime.now(UTC) - timedelta(hours=hours_late))
    d.stop()  # must not process (and so lose) the overdue run on the way down


def sync_runs(app: App) -> list[Any]:
    with app.engine.connect() as conn:
        return list(conn.execute(text("SELECT started_at, finished_at, outcome FROM sync_runs ORDER BY id")))


def test_missed_nightly_runs_once_at_start(make_app: Callable[..., App]) -> None:
    app = make_app()
    leave_overdue(app, hours_late=5)  # down overnight; default grace is 12 h

    daemon = Daemon(app)
    seen, done = watch(daemon)
    daemon.start()
    try:
        assert done.wait(30), seen
    finally:
        daemon.stop()
    assert seen.count((EVENT_JOB_EXECUTED, jobs.NIGHTLY_JOB)) == 1
    assert [r.outcome for r in sync_runs(app)] == ["succeeded"]
    with app.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM cases")).scalar_one() == 40
        assert conn.execute(text("SELECT count(*) FROM reminders")).scalar_one() == 120  # planned too

    # Restarting again registers nothing new and does not run the nightly job again.
    again = Daemon(app)
    again.scheduler.start(paused=True)
    assert again.ensure_jobs() == {
        jobs.NIGHTLY_JOB: "kept",
        jobs.DISPATCH_JOB: "kept",
        jobs.SUBMISSION_JOB: "kept",
    }
    nxt = again.scheduler.get_job(jobs.NIGHTLY_JOB).next_run_time
    again.stop()
    assert timedelta(0) < nxt - datetime.now(UTC) <= timedelta(days=1)


def test_run_later_than_grace_is_reported_missed(make_app: Callable[..., App]) -> None:
    # The nightly time is put half a day from now: with the default 02:30 UTC, a run started
    # between 02:30 and 03:30 UTC found that day's own fire time within the grace and ran it.
    far = (datetime.now(UTC).hour + 12) % 24
    app = make_app(scheduler={"misfire_grace_seconds": 3600, "nightly": {"cron": f"30 {far} * * *"}})
    leave_overdue(app, hours_late=2)
    daemon = Daemon(app)
    seen, done = watch(daemon)
    daemon.start()
    try:
        assert done.wait(10)
    finally:
        daemon.stop()
    assert seen == [(EVENT_JOB_MISSED, jobs.NIGHTLY_JOB)]
    assert sync_runs(app) == []


def test_changed_config_updates_stored_job_and_keeps_missed_run(make_app: Callable[..., App]) -> None:
    app = make_app(scheduler={"misfire_grace_seconds": 3600})
    leave_overdue(app, hours_late=2)  # would be missed under the stored 1 h grace
    # The operator raises the grace and moves the nightly time; stored jobs keep their old
    # options unless the daemon updates them, and replace_existing would drop the overdue run.
    app2 = make_app(scheduler={"misfire_grace_seconds": 6 * 3600, "nightly": {"cron": "0 4 * * *"}})
    daemon = Daemon(app2)
    seen, done = watch(daemon)
    jobs.bind(app2)  # what Daemon.start does, taken apart here to look at the stored job
    daemon.scheduler.start(paused=True)
    assert daemon.ensure_jobs()[jobs.NIGHTLY_JOB] == "updated"
    job = daemon.scheduler.get_job(jobs.NIGHTLY_JOB)
    assert job.misfire_grace_time == 6 * 3600 and "hour='4'" in repr(job.trigger)
    daemon.scheduler.resume()
    try:
        assert done.wait(30)
    finally:
        daemon.stop()
    assert seen.count((EVENT_JOB_EXECUTED, jobs.NIGHTLY_JOB)) == 1
    assert [r.outcome for r in sync_runs(app2)] == ["succeeded"]


class RecordingService:
    """Stands in for the MLLP listener / web UI that other modules provide."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def start(self) -> None:
        self.log.append(f"start {self.name}")

    def stop(self) -> None:
        self.log.append(f"stop {self.name}")


def test_daemon_runs_extra_services(make_app: Callable[..., App]) -> None:
    app = make_app()
    calls: list[str] = []
    daemon = Daemon(app, [RecordingService("mllp", calls), RecordingService("web", calls)])
    daemon.request_stop()  # stop as soon as everything is up
    assert daemon.run_forever(install_signals=False) == 0
    assert calls == ["start mllp", "start web", "stop web", "stop mllp"]
    assert not daemon.scheduler.running


# -- locks -----------------------------------------------------------------------------------------


def test_lease_lock(make_app: Callable[..., App], db_url: str) -> None:
    app = make_app(db_url)
    clock = FixedClock(datetime(2025, 1, 1, tzinfo=UTC))
    a = LeaseLock(app.engine, "nightly", 60, clock, owner="a")
    b = LeaseLock(app.engine, "nightly", 60, clock, owner="b")
    assert a.acquire() and not b.acquire()
    clock.advance(seconds=50)
    assert a.renew()
    clock.advance(seconds=50)
    assert not b.acquire()  # renewed lease still valid
    clock.advance(seconds=11)
    assert b.acquire()  # a's lease lapsed (a died): b takes over
    assert not a.renew()
    b.release()
    with job_lock(app.engine, "nightly", 60, clock) as held:
        assert held is not None
        with job_lock(app.engine, "nightly", 60, clock) as second:
            assert second is None


RACE_SCRIPT = """
import json, sys
from registry_adapter import logs
from registry_adapter.app import build_app
from registry_adapter.config import parse_settings
from scheduler import jobs

cfg = json.loads(sys.argv[1])
logs.configure("json", "INFO")
app = build_app(parse_settings(cfg))
jobs.bind(app)
app.engine.connect().close()
real_refresh = jobs.refresh_mappings


def hold_the_lock(*args, **kwargs):
    # Runs only inside the nightly lock: say so, then keep the lock until the test has seen
    # the other process give up, so the two provably overlapped.
    print("holding", flush=True)
    assert sys.stdin.readline().strip() == "release"
    return real_refresh(*args, **kwargs)


jobs.refresh_mappings = hold_the_lock
print("ready", flush=True)
assert sys.stdin.readline().strip() == "go"  # the barrier: both are ready before either starts
jobs.nightly()
"""


def test_two_processes_never_run_nightly_together(
    make_app: Callable[..., App], pg_url: str, tmp_path: Path
) -> None:
    app = make_app(pg_url)
    cfg = base_config(tmp_path, database={"url": pg_url}, logging={"format": "json", "level": "INFO"})
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE_SCRIPT, json.dumps(cfg)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.stderr
        for p in procs:  # both are at the barrier: release them together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        # Exactly one gets the lock and says so; the other must give up while it is held.
        holder = wait_for_line(procs, "holding", timeout=60)
        loser = procs[1 - procs.index(holder)]
        lost_out, lost_err = loser.communicate(timeout=60)
        assert loser.returncode == 0, lost_err[-2000:]
        assert "holding" not in lost_out
        assert [json_events(lost_err).count(e) for e in ("job.skipped", "job.done")] == [1, 0]
        assert holder.poll() is None  # the holder was inside the lock the whole time
        _, held_err = holder.communicate("release\n", timeout=90)
        assert holder.returncode == 0, held_err[-2000:]
        assert [json_events(held_err).count(e) for e in ("job.skipped", "job.done")] == [0, 1]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [r.outcome for r in sync_runs(app)] == ["succeeded"]


def json_events(stderr: str) -> list[str]:
    return [json.loads(line)["event"] for line in stderr.splitlines() if line.startswith("{")]


def wait_for_line(procs: list[subprocess.Popen[str]], wanted: str, timeout: float) -> subprocess.Popen[str]:
    """The first process whose stdout prints ``wanted`` (blocking reads, no polling)."""
    with selectors.DefaultSelector() as sel:
        for p in procs:
            assert p.stdout is not None
            sel.register(p.stdout, selectors.EVENT_READ, p)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                line = key.fileobj.readline()  # type: ignore[union-attr]
                if line.strip() == wanted:
                    return key.data  # type: ignore[no-any-return]
                if not line:
                    sel.unregister(key.fileobj)
    raise AssertionError(f"no process printed {wanted!r} within {timeout} s")


def registry_adapter_command() -> str:
    """The console script installed beside the interpreter running the tests (a venv, a
    system install, a container): not a path inside the checkout."""
    scripts = sysconfig.get_path("scripts")
    search = os.pathsep.join([scripts, str(Path(sys.executable).parent)])
    found = shutil.which("registry-adapter", path=search)
    if found is None:
        pytest.fail(f"no registry-adapter console script in {search}; run `pip install -e .`")
    return found


def start_daemon(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [registry_adapter_command(), "--config", str(config), "run", "--no-services"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_two_daemons_on_one_postgres_and_sigterm(
    make_app: Callable[..., App], pg_url: str, tmp_path: Path
) -> None:
    app = make_app(pg_url)
    leave_overdue(app, hours_late=3)  # both daemons find the nightly run due at start
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            base_config(tmp_path, database={"url": pg_url}, logging={"format": "json", "level": "INFO"})
        )
    )
    daemons = [start_daemon(config), start_daemon(config)]
    lines: list[list[str]] = [[], []]
    readers = [
        threading.Thread(target=lambda d=d, out=out: out.extend(d.stderr or []), daemon=True)
        for d, out in zip(daemons, lines, strict=True)
    ]
    for r in readers:
        r.start()
    deadline = time.monotonic() + 60
    # Wait on what the daemons report, not a fixed time: both up (schedulers resumed on the
    # overdue run in the shared store) and the run done.
    while not (
        all(any('"daemon.started"' in line for line in out) for out in lines)
        and any(r.outcome == "succeeded" for r in sync_runs(app))
    ):
        assert time.monotonic() < deadline and all(d.poll() is None for d in daemons), [
            "".join(out)[-2000:] for out in lines
        ]
        time.sleep(0.2)
    for d in daemons:
        d.send_signal(signal.SIGTERM)
    for d in daemons:
        d.wait(timeout=30)
    for r in readers:
        r.join(10)
    assert [d.returncode for d in daemons] == [0, 0], ["".join(out)[-2000:] for out in lines]
    for out in lines:
        events = json_events("".join(out))
        assert "daemon.started" in events and events[-1] == "daemon.stopped"
    runs = sync_runs(app)
    assert runs and all(r.outcome == "succeeded" for r in runs)
    for earlier, later in pairwise(runs):
        assert later.started_at >= earlier.finished_at  # never at the same time


def test_sigterm_stops_daemon_cleanly_sqlite(make_app: Callable[..., App], tmp_path: Path) -> None:
    make_app()  # migrated SQLite database at tmp_path/registry.db
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base_config(tmp_path, logging={"format": "json", "level": "INFO"})))
    proc = start_daemon(config)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    # Signal while the daemon is still logging its start (handlers are installed by then): a
    # handler that logs or takes a lock can deadlock right here.
    while not any('"job.registered"' in line for line in lines):
        assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)[-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("daemon did not stop on SIGTERM:\n" + "".join(lines)[-3000:]) from None
    reader.join(5)
    assert proc.returncode == 0
    output = "".join(lines)
    assert '"daemon.stopped"' in output and '"signal": "SIGTERM"' in output
