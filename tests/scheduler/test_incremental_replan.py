"""After a run, reminders are planned only for the cases it can have changed, with the same
result as planning every case."""

from __future__ import annotations

from collections.abc import Callable

from registry_adapter.app import App
from registry_store.timeutil import utcnow
from scheduler.replan import replan
from tests.conftest import SAMPLE_FEED
from tests.submission.conftest import SAMPLE_OUTCOMES, ingest


def test_replanning_after_a_run_leaves_nothing_for_a_full_plan(
    make_app: Callable[..., App], db_url: str
) -> None:
    app = make_app(db_url)
    since = utcnow()
    ingest(app, SAMPLE_FEED)
    first = replan(app, "test", since)
    assert first is not None and first.created > 0
    since = utcnow()
    ingest(app, SAMPLE_OUTCOMES)  # late records: responses, readmissions of a few patients
    again = replan(app, "test", since)
    assert again is not None
    # Every case planned in full finds each row already as planned.
    full = replan(app, "test")
    assert full is not None and (full.created, full.updated) == (0, 0)
    assert sum(full.by_status.values()) > sum(again.by_status.values())
