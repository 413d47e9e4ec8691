"""GET /r/{token}: a reminder's link, verified, recorded and sent on to the questionnaire."""

from __future__ import annotations

import time
from datetime import date, timedelta
from typing import Any

import pytest
from itsdangerous import TimestampSigner
from sqlalchemy import select
from starlette.testclient import TestClient

from registry_adapter.app import App
from registry_store.tables import CASES, REMINDERS
from registry_store.tables import REMINDER_CLICKS as CLICKS
from review.app import create_app
from review.settings import ReviewSettings
from scheduler.channels.base import make_link_token
from scheduler.settings import RemindersSettings

SECRET = "link-secret-for-tests-0123456789"
URLS = {
    "odi:90d": "https://redcap.example.org/surveys/?s=ODI90",
    "1y": "https://portal.example.org/proms/{timepoint}",
    "ndi": "https://portal.example.org/proms/{instrument}/{timepoint}",
}
INVALID = "This link is not valid or has expired."


def _configured(app: App, secret: str | None = SECRET, urls: dict[str, str] | None = None) -> App:
    s = app.settings
    current = s.section(RemindersSettings)
    reminders = current.model_copy(
        update={"link": current.link.model_copy(update={"token_secret": secret, "max_age_days": 30})}
    )
    urls = URLS if urls is None else urls
    review = s.section(ReviewSettings).model_copy(update={"questionnaire_urls": urls})
    return App(settings=s.with_section(reminders).with_section(review), db_url=app.db_url)


def _reminder(app: App, module: str, timepoint: str) -> int:
    """A reminder row for the first case of ``module``."""
    with app.engine.begin() as conn:
        case_id = conn.execute(select(CASES.c.id).where(CASES.c.module == module).limit(1)).scalar_one()
        today = date.today()
        return int(
            conn.execute(
                REMINDERS.insert()
                .values(
                    case_id=case_id,
                    timepoint=timepoint,
                    due_date=today,
                    window_start=today,
                    window_end=today + timedelta(days=30),
                    status="sent",
                    attempts=1,
                )
                .returning(REMINDERS.c.id)
            ).scalar_one()
        )


def _clicks(app: App) -> list[Any]:
    with app.engine.connect() as conn:
        return list(conn.execute(select(CLICKS.c.reminder_id, CLICKS.c.attempt)))


def _open(app: App, token: str) -> Any:
    return TestClient(create_app(app)).get(f"/r/{token}", follow_redirects=False)


def test_a_valid_link_is_recorded_and_redirected_to_the_questionnaire(review_app: App) -> None:
    app = _configured(review_app)
    lumbar_90d = _reminder(app, "lumbar", "90d")
    lumbar_1y = _reminder(app, "lumbar", "1y")
    cervical_90d = _reminder(app, "cervical", "90d")

    opened = _open(app, make_link_token(SECRET, lumbar_90d, 2))  # no sign-in needed
    assert opened.status_code == 303
    assert opened.headers["location"] == "https://redcap.example.org/surveys/?s=ODI90"
    assert _open(app, make_link_token(SECRET, lumbar_1y, 1)).headers["location"] == (
        "https://portal.example.org/proms/1y"
    )
    assert _open(app, make_link_token(SECRET, cervical_90d, 1)).headers["location"] == (
        "https://portal.example.org/proms/ndi/90d"
    )
    assert _open(app, make_link_token(SECRET, lumbar_90d, 2)).status_code == 303  # again: a second click
    assert sorted(_clicks(app)) == sorted(
        [(lumbar_90d, 2), (lumbar_1y, 1), (cervical_90d, 1), (lumbar_90d, 2)]
    )


def _assert_plain(response: Any, message: str = INVALID) -> None:
    assert response.status_code == 404
    assert message in response.text
    # Nothing of the UI or the case: no navigation, no site, no case or patient ids.
    for leaked in ("sample:", "Patient", "test-site", "/causes", "Sign in"):
        assert leaked not in response.text


def test_invalid_expired_and_unknown_links_get_a_plain_page(
    review_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _configured(review_app)
    reminder = _reminder(app, "lumbar", "90d")
    _assert_plain(_open(app, make_link_token("another-secret-of-32-characters!!", reminder, 1)))
    _assert_plain(_open(app, "not-a-token"))
    _assert_plain(_open(app, make_link_token(SECRET, reminder + 1000, 1)))  # no such reminder
    with monkeypatch.context() as past:  # a token signed 31 days ago; links live 30
        past.setattr(TimestampSigner, "get_timestamp", lambda _self: int(time.time()) - 31 * 86400)
        expired = make_link_token(SECRET, reminder, 1)
    _assert_plain(_open(app, expired))
    _assert_plain(_open(_configured(review_app, secret=None), make_link_token(SECRET, reminder, 1)))
    assert _clicks(app) == []


def test_a_time_point_without_a_questionnaire_url_gets_a_plain_page(review_app: App) -> None:
    app = _configured(review_app, urls={"1y": "https://portal.example.org/1y"})
    reminder = _reminder(app, "lumbar", "90d")
    _assert_plain(_open(app, make_link_token(SECRET, reminder, 1)), "not available online")
