"""Outcomes after a run are recomputed only for the patients it touched, and measures read the
stored outcomes; both give what a full recompute gives."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from registry_adapter.app import App
from registry_adapter.submission import measures
from registry_adapter.submission.service import after_store, current_outcomes, refresh_outcomes
from registry_store.tables import CASE_OUTCOMES
from registry_store.timeutil import as_utc, utcnow
from tests.conftest import SAMPLE_FEED
from tests.submission.conftest import SAMPLE_OUTCOMES, ingest


def _stored(app: App) -> dict[str, tuple[dict[str, Any], Any]]:
    with app.engine.connect() as conn:
        columns = CASE_OUTCOMES.c.case_id, CASE_OUTCOMES.c.outcomes, CASE_OUTCOMES.c.computed_at
        rows = conn.execute(select(*columns))
        return {r.case_id: (r.outcomes, as_utc(r.computed_at)) for r in rows}


def _full(app: App) -> dict[str, dict[str, Any]]:
    with app.engine.connect() as conn:
        return refresh_outcomes(conn, app, store=False)


def test_after_a_run_only_the_touched_patients_are_recomputed(
    make_app: Callable[..., App], db_url: str
) -> None:
    app = make_app(db_url)
    ingest(app, SAMPLE_FEED)
    after_store(app, "test")
    since = utcnow()
    ingest(app, SAMPLE_OUTCOMES)  # next month's records about a few patients
    after_store(app, "test", since)
    stored = _stored(app)
    assert {cid: outcomes for cid, (outcomes, _) in stored.items()} == _full(app)
    redone = {cid for cid, (_, at) in stored.items() if at >= since}
    assert "sample:proc-0004" in redone and 0 < len(redone) < len(stored)
    assert stored["sample:proc-0004"][0]["readmission_days"] == 45


def test_measures_read_stored_outcomes_and_recompute_what_is_out_of_date(
    make_app: Callable[..., App], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(db_url)
    ingest(app, SAMPLE_FEED)
    after_store(app, "test")
    ingest(app, SAMPLE_OUTCOMES)  # stored without the hook: the stored outcomes are stale
    with app.engine.connect() as conn:
        assert current_outcomes(conn, app, store=False) == _full(app)
    fresh = measures.measures_by_quarter(app), measures.compute_measures(app)
    # What measures gave when they recomputed every case on every call.
    monkeypatch.setattr(
        measures, "current_outcomes", lambda conn, app, store=True: refresh_outcomes(conn, app, store=store)
    )
    assert fresh == (measures.measures_by_quarter(app), measures.compute_measures(app))
    # compute_measures stored what it recomputed: nothing is out of date any more.
    assert {cid: outcomes for cid, (outcomes, _) in _stored(app).items()} == _full(app)
