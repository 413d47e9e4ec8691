"""`registry-adapter worker`: workers side by side on PostgreSQL map every pending record once,
and the registry ends exactly as a single process leaves it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from registry_adapter.app import App
from registry_adapter.pipeline import Pipeline, RunCounts
from registry_adapter.worker import run_worker
from tests.registry_adapter.test_fast_path_equivalence import _adt, _import, _snapshot, make_feed


def _handled(c: RunCounts) -> int:
    return c.mapped + c.failed + c.out_of_scope + c.excluded


def test_two_workers_on_postgresql_give_the_single_process_rows(
    make_app: Callable[..., App], pg_url: str, tmp_path: Path
) -> None:
    feed = make_feed(tmp_path)
    (feed / "adt.hl7").write_bytes(b"\n".join(_adt(i) for i in range(40)))
    app = make_app(pg_url, batch_size=25)
    _import(app, feed)
    single = _snapshot(app)

    selected, nothing = Pipeline(app).reprocess(everything=True, map_now=False)
    assert selected > 400 and _handled(nothing) == 0
    results: list[RunCounts] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(run_worker(Pipeline(app), until_idle=True))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == [] and len(results) == 2
    # Every record was claimed by exactly one worker, and both took a share.
    assert sum(_handled(c) for c in results) == selected
    assert all(_handled(c) > 0 for c in results)
    assert _snapshot(app) == single


def test_worker_command_maps_what_reprocess_no_map_left_pending(
    make_app: Callable[..., App], tmp_path: Path
) -> None:
    from registry_adapter.cli import cli
    from tests.conftest import write_config_file

    app = make_app()
    _import(app, make_feed(tmp_path))
    single = _snapshot(app)
    config = write_config_file(tmp_path, sources=[])
    runner = CliRunner()
    marked = runner.invoke(cli, ["--config", str(config), "reprocess", "--all", "--no-map", "--json"])
    assert marked.exit_code == 0, marked.output
    with app.engine.connect() as conn:
        from sqlalchemy import text

        assert conn.execute(text("SELECT count(*) FROM staging WHERE status = 'pending'")).scalar_one() > 200
    done = runner.invoke(cli, ["--config", str(config), "worker", "--until-idle", "--json"])
    assert done.exit_code == 0, done.output
    assert _snapshot(app) == single


def test_only_the_last_worker_to_stop_is_told_to_refresh(make_app: Callable[..., App], pg_url: str) -> None:
    """A worker holds a lease while it runs; one that stops while another still runs leaves the
    after-store refresh (outcomes, reminders) to it, the last one runs it; a killed worker's
    lease (dead process) does not count as running."""
    import subprocess
    import sys

    from registry_adapter.worker import run_registered
    from registry_store.leases import LeaseLock, worker_lock_name

    app = make_app(pg_url)
    counts, last, others = run_registered(Pipeline(app), until_idle=True)
    assert last and not others and _handled(counts) == 0

    other = LeaseLock(app.engine, worker_lock_name(), 60)
    assert other.acquire()
    _, last, others = run_registered(Pipeline(app), until_idle=True)
    assert not last and others
    other.release()

    probe = [sys.executable, "-c", "import os; print(os.getpid())"]
    gone = subprocess.run(probe, capture_output=True, text=True, check=True)
    dead = LeaseLock(app.engine, worker_lock_name(), 60)
    assert dead.acquire()
    with app.engine.begin() as conn:
        from sqlalchemy import text

        conn.execute(text("UPDATE job_locks SET pid = :pid"), {"pid": int(gone.stdout)})
    _, last, others = run_registered(Pipeline(app), until_idle=True)
    assert last and not others


def test_a_bulk_reprocess_refreshes_postgresql_statistics_before_workers_claim(
    make_app: Callable[..., App], pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After ``reprocess --all`` flips every status, stale statistics made PostgreSQL sort every
    pending row for each claimed batch (quadratic in a large remap); a bulk change re-samples
    them. Here "bulk" is lowered to this feed's size."""
    from sqlalchemy import text

    import registry_adapter.pipeline as pipeline_module

    app = make_app(pg_url, batch_size=25)
    _import(app, make_feed(tmp_path))

    def analyses() -> int:
        with app.engine.connect() as conn:
            conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
            return int(
                conn.execute(
                    text("SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'staging'")
                ).scalar_one()
            )

    monkeypatch.setattr(pipeline_module, "BULK_CHANGE", 10**9)
    before = analyses()
    Pipeline(app).reprocess(everything=True, map_now=False)
    assert analyses() == before  # a small change leaves the statistics to autovacuum
    monkeypatch.setattr(pipeline_module, "BULK_CHANGE", 1)
    selected, _ = Pipeline(app).reprocess(everything=True, map_now=False)
    assert selected > 200
    assert analyses() == before + 1
