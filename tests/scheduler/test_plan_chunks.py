"""Reminders are planned a chunk of cases at a time (memory flat in the store's size), with
exactly the rows one whole pass plans; a reminder whose case is gone is still cancelled."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, text

from registry_adapter.app import App
from registry_store.tables import REMINDERS
from scheduler.planner import plan_reminders
from tests.conftest import SAMPLE_FEED
from tests.submission.conftest import ingest

TODAY = date(2025, 6, 1)


def _plan(app: App, per_chunk: int) -> tuple[dict[str, int], list[tuple[Any, ...]]]:
    conn = app.engine.connect()
    tx = conn.begin()
    try:
        counts = plan_reminders(conn, app.settings, TODAY, per_chunk=per_chunk)
        rows = conn.execute(select(REMINDERS).order_by(REMINDERS.c.id)).all()
        skip = {"created_at", "updated_at"}
        return counts.as_dict(), [
            tuple(v for k, v in r._mapping.items() if k not in skip) for r in rows
        ]
    finally:
        tx.rollback()
        conn.close()


def test_chunked_planning_gives_the_whole_pass_rows(make_app: Callable[..., App], tmp_path: Path) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'plan.db'}")
    ingest(app, SAMPLE_FEED)
    with app.engine.begin() as conn:
        conn.execute(
            insert(REMINDERS).values(
                case_id="sample:gone", timepoint="6m", due_date=TODAY, window_start=TODAY,
                window_end=TODAY, status="scheduled", attempts=0, anchor="surgery",
            )
        )
        cases = conn.execute(text("SELECT count(*) FROM cases")).scalar_one()
    assert cases > 5
    whole_counts, whole = _plan(app, 1_000_000)
    chunked_counts, chunked = _plan(app, 2)
    assert chunked == whole and chunked_counts == whole_counts
    assert [r for r in whole if "sample:gone" in r and "case_missing" in r]
