"""``most_cases_changed_since``: an after-store refresh after a backfill redoes every case
chunk by chunk instead of collecting the changed ones' ids."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from registry_adapter.app import App
from registry_store.cases import most_cases_changed_since
from registry_store.tables import CASES
from tests.conftest import SAMPLE_FEED
from tests.submission.conftest import ingest


def test_half_the_cases_or_more(make_app: Callable[..., App]) -> None:
    app = make_app()
    with app.engine.connect() as conn:
        assert not most_cases_changed_since(conn, datetime(2000, 1, 1, tzinfo=UTC))  # no cases at all
    ingest(app, SAMPLE_FEED)
    now = datetime.now(UTC)
    with app.engine.begin() as conn:
        assert most_cases_changed_since(conn, now - timedelta(days=1))
        assert not most_cases_changed_since(conn, now + timedelta(days=1))
        ids = sorted(conn.execute(CASES.select().with_only_columns(CASES.c.id)).scalars())
        later = now + timedelta(hours=1)
        half = ids[: (len(ids) + 1) // 2]
        soon = later + timedelta(minutes=1)
        conn.execute(update(CASES).where(CASES.c.id.in_(half)).values(updated_at=soon))
        assert most_cases_changed_since(conn, later)
        conn.execute(update(CASES).where(CASES.c.id == half[0]).values(updated_at=now))
        assert most_cases_changed_since(conn, later) == (2 * (len(half) - 1) >= len(ids))
