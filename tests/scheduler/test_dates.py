"""Due dates are calendar dates in the site's zone: DST and leap days never shift them, and
an hourly dispatch on the UTC grid (as the daemon runs it) sends on the local due date."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text

from registry_adapter.app import App
from registry_adapter.config import TimepointWindow
from scheduler.clock import FixedClock
from scheduler.dispatcher import Dispatcher
from scheduler.planner import window
from tests.scheduler.conftest import TZ, Feed, SmtpSink, reminder_config

ONE_YEAR = TimepointWindow(anchor="surgery", due_days=365, window_start_days=300, window_end_days=456)
NINETY = TimepointWindow(anchor="discharge", due_days=90, window_start_days=60, window_end_days=180)


def test_leap_days_count_as_days() -> None:
    assert window(ONE_YEAR, date(2024, 2, 29), None)[0] == date(2025, 2, 28)
    assert window(ONE_YEAR, date(2023, 3, 1), None)[0] == date(2024, 2, 29)
    assert window(NINETY, date(2023, 11, 28), date(2023, 12, 1)) == (
        date(2024, 2, 29),
        date(2024, 1, 30),
        date(2024, 5, 29),
    )
    # discharge unknown: the surgery date anchors the 90-day time point
    assert window(NINETY, date(2024, 1, 1), None)[0] == date(2024, 3, 31)


def first_sends(app: App) -> dict[str, datetime]:
    with app.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.procedure_id || ':' || r.timepoint, min(s.sent_at) FROM reminder_sends s "
                "JOIN reminders r ON r.id = s.reminder_id JOIN cases c ON c.id = r.case_id GROUP BY 1"
            )
        )
        out = {}
        for key, at in rows:
            at = at if isinstance(at, datetime) else datetime.fromisoformat(at)
            out[key] = at if at.tzinfo else at.replace(tzinfo=UTC)
        return out


def test_hourly_dispatch_sends_on_local_due_date_across_dst(
    reminder_app: Callable[..., tuple[App, Feed]], smtp_server: SmtpSink
) -> None:
    app, feed = reminder_app(**reminder_config(smtp_server, remind=["1y", "90d"]))
    cases = {
        # discharge 2024-12-09: 90 days later is 2025-03-09, the US spring-forward day
        "spring": (date(2024, 12, 6), date(2024, 12, 9), "90d", date(2025, 3, 9)),
        # surgery on the 2024 spring-forward day: one year is 2025-03-10
        "dstsurg": (date(2024, 3, 10), date(2024, 3, 12), "1y", date(2025, 3, 10)),
        # surgery on a leap day: 365 days later is 2025-02-28
        "leap": (date(2024, 2, 29), date(2024, 3, 2), "1y", date(2025, 2, 28)),
        # discharge 2025-08-04: due 2025-11-02, the US fall-back day
        "fall": (date(2025, 8, 1), date(2025, 8, 4), "90d", date(2025, 11, 2)),
    }
    for n, (surgery, discharge, _, _) in cases.items():
        feed.patient(f"pat-{n}", email=f"{n}@example.invalid")
        feed.surgery(n, f"pat-{n}", surgery, discharge)
    feed.ingest()

    clock = FixedClock(datetime(2025, 1, 1, tzinfo=UTC))
    dispatcher = Dispatcher(app, clock)
    for due in sorted(c[3] for c in cases.values()):
        # every hour on the UTC grid, from the day before the due date to the day after
        start = datetime.combine(due - timedelta(days=1), datetime.min.time(), UTC)
        for hour in range(72):
            clock.set(start + timedelta(hours=hour))
            dispatcher.run()

    sent = first_sends(app)
    for n, (_, _, tp, due) in cases.items():
        local = sent[f"proc-{n}:{tp}"].astimezone(TZ)
        # the due date, at the first hourly run after quiet hours end (08:00 local)
        assert (local.date(), local.hour, local.minute) == (due, 8, 0), n
    assert sent["proc-spring:90d"] == datetime(2025, 3, 9, 13, tzinfo=UTC)  # CDT, UTC-5
    assert sent["proc-leap:1y"] == datetime(2025, 2, 28, 14, tzinfo=UTC)  # CST, UTC-6
    assert sent["proc-fall:90d"] == datetime(2025, 11, 2, 14, tzinfo=UTC)  # CST again
    # One message per time point and day: the later hourly runs found nothing more to send.
    # The fifth is the leap-day case's second attempt (due 03-07), sent when the simulation
    # next ran (03-08, 00:00 UTC = 03-07 18:00 local, outside quiet hours).
    assert len(smtp_server.messages) == 5
    with app.engine.connect() as conn:
        second = conn.execute(
            text(
                "SELECT s.attempt, s.sent_at FROM reminder_sends s JOIN reminders r ON r.id = s.reminder_id "
                "WHERE r.case_id = 'feed:proc-leap' AND s.attempt = 2"
            )
        ).one()
    assert str(second.sent_at)[:16] == "2025-03-08 00:00"
