"""Leases after ``kill -9``: a real process takes the nightly and sync leases mid-sync and is
killed with SIGKILL; nothing waits for its leases to lapse."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from apscheduler.events import EVENT_JOB_EXECUTED
from click.testing import CliRunner, Result
from sqlalchemy import text

from registry_adapter.app import App
from registry_adapter.cli import cli
from registry_adapter.pipeline import Pipeline, SourceBusy
from registry_adapter.sources import build_source
from registry_store.leases import HOST, LeaseLock
from scheduler import jobs
from scheduler.daemon import Daemon
from tests.conftest import base_config
from tests.scheduler.test_daemon import watch

ROOT = Path(__file__).resolve().parents[2]

# The nightly job in a real process, stopped inside the sync (after the run row and both
# leases were committed) until it is killed.
KILLED_MID_SYNC = """
import json, sys, time
from registry_adapter import logs, pipeline
from registry_adapter.app import build_app
from registry_adapter.config import parse_settings
from scheduler import jobs

def stage_and_hang(*args, **kwargs):
    print("syncing", flush=True)
    while True:
        time.sleep(60)

logs.configure("json", "WARNING")
pipeline.stage_records = stage_and_hang
app = build_app(parse_settings(json.loads(sys.argv[1])))
jobs.bind(app)
jobs.nightly()
"""


def leases(app: App) -> dict[str, tuple[str, int]]:
    with app.engine.connect() as conn:
        return {r.name: (r.host, r.pid) for r in conn.execute(text("SELECT name, host, pid FROM job_locks"))}


def run_outcomes(app: App) -> list[str]:
    with app.engine.connect() as conn:
        return [r.outcome for r in conn.execute(text("SELECT outcome FROM sync_runs ORDER BY id"))]


def cli_run(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path)))
    return path


@pytest.fixture
def killed(make_app: Callable[..., App], tmp_path: Path) -> Iterator[tuple[App, int]]:
    """An App whose nightly sync was killed with SIGKILL mid-way (and the pid it had)."""
    app = make_app()
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_SYNC, json.dumps(base_config(tmp_path))],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "syncing", proc.stderr
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)  # reaped: the pid is gone
    assert proc.returncode == -signal.SIGKILL
    yield app, proc.pid


def test_killed_nightly_is_detected_and_rerun_at_start(killed: tuple[App, int], config: Path) -> None:
    app, pid = killed
    assert leases(app) == {"nightly": (HOST, pid), "sync:sample": (HOST, pid)}
    assert run_outcomes(app) == ["running"]
    listed = json.loads(cli_run(config, "locks", "list", "--json").output)
    assert [(r["name"], r["pid"], r["state"]) for r in listed] == [
        ("nightly", pid, "dead"),
        ("sync:sample", pid, "dead"),
    ]

    # The next start: the run is marked interrupted and the nightly job runs again at once
    # (its lease, held by the dead pid, is taken over without waiting for it to lapse).
    daemon = Daemon(app)
    seen, done = watch(daemon)
    daemon.start()
    try:
        assert done.wait(60), seen
    finally:
        daemon.stop()
    assert seen.count((EVENT_JOB_EXECUTED, jobs.NIGHTLY_JOB)) == 1
    assert run_outcomes(app) == ["interrupted", "succeeded"]
    assert leases(app) == {}


def test_killed_sync_lease_taken_over_by_next_sync(killed: tuple[App, int]) -> None:
    app, _ = killed
    [source_cfg] = app.settings.sources
    result = Pipeline(app).ingest(build_source(source_cfg, app))
    assert result.outcome == "succeeded"
    assert run_outcomes(app) == ["interrupted", "succeeded"]
    assert set(leases(app)) == {"nightly"}  # the nightly lease waits for the next start


def test_busy_source_names_its_holder(make_app: Callable[..., App]) -> None:
    app = make_app()
    holder = LeaseLock(app.engine, "sync:sample", 90)
    assert holder.acquire()
    [source_cfg] = app.settings.sources
    holder_and_expiry = rf"pid {os.getpid()} on host {re.escape(HOST)}, lease expires 20\d\d-"
    with pytest.raises(SourceBusy, match=holder_and_expiry):
        Pipeline(app).ingest(build_source(source_cfg, app))
    holder.release()


def test_locks_release_refuses_a_live_holder_unless_forced(
    make_app: Callable[..., App], config: Path
) -> None:
    app = make_app()
    holder = LeaseLock(app.engine, "sync:sample", 90)
    assert holder.acquire()
    with app.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO sync_runs (source, kind, started_at, outcome, counts, watermark) "
                "VALUES ('sample', 'sync', CURRENT_TIMESTAMP, 'running', '{}', '{}')"
            )
        )
    refused = CliRunner().invoke(cli, ["--config", str(config), "locks", "release", "sync:sample"])
    assert refused.exit_code == 2 and "held by a live process" in refused.output
    assert set(leases(app)) == {"sync:sample"}
    forced = cli_run(config, "locks", "release", "sync:sample", "--force")
    assert forced.exit_code == 0, forced.output
    assert leases(app) == {} and run_outcomes(app) == ["interrupted"]
    assert not holder.renew()  # the holder learns it lost the lease


def test_lease_of_an_earlier_process_with_our_pid_is_taken_over(make_app: Callable[..., App]) -> None:
    """Containers restart as pid 1: a lease left with our host and pid, by an owner this
    process never used, is from the process before us. One from another host waits for its
    heartbeat to go stale."""
    app = make_app()
    with app.engine.begin() as conn:
        for name, host, pid in (("nightly", HOST, os.getpid()), ("sync:sample", "other-host", 1)):
            conn.execute(
                text(
                    "INSERT INTO job_locks (name, owner, acquired_at, expires_at, host, pid, heartbeat_at) "
                    "VALUES (:name, :owner, :now, :later, :host, :pid, :now)"
                ),
                {
                    "name": name,
                    "owner": f"{host}:{pid}:before",
                    "now": datetime.now(UTC),
                    "later": datetime.now(UTC) + timedelta(seconds=60),
                    "host": host,
                    "pid": pid,
                },
            )
    nightly = LeaseLock(app.engine, "nightly", 90)
    assert nightly.acquire()
    assert nightly.took_over is not None and nightly.took_over.owner == f"{HOST}:{os.getpid()}:before"
    assert not LeaseLock(app.engine, "sync:sample", 90).acquire()
