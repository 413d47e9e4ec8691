"""A channel outage: the SMTP server is down for days, then comes back.

Failed runs must not claim new attempts behind the failing one, and once the server answers
each time point gets one message, not the whole backlog in the same minute.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import date, datetime, timedelta

from aiosmtpd.controller import Controller
from sqlalchemy import text

from registry_adapter.app import App
from registry_store.tables import REMINDER_SENDS as SENDS
from registry_store.tables import REMINDERS
from scheduler.clock import at_local
from scheduler.dispatcher import Dispatcher
from tests.scheduler.conftest import TZ, Feed, SmtpSink, free_port, reminder_config

OUTAGE_START = date(2025, 4, 9)
OUTAGE_DAYS = 3


def sends_by_status(app: App) -> Counter[tuple[str, int, str]]:
    with app.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.patient_id, s.attempt, s.status FROM reminder_sends s "
                "JOIN reminders r ON r.id = s.reminder_id JOIN cases c ON c.id = r.case_id"
            )
        )
        return Counter((r.patient_id, r.attempt, r.status) for r in rows)


def test_smtp_down_three_days_then_one_message_per_time_point(
    reminder_app: Callable[..., tuple[App, Feed]],
) -> None:
    sink = SmtpSink("127.0.0.1", free_port())  # nothing listens on the port yet: the outage
    app, feed = reminder_app(**reminder_config(sink, max_tries=8, retry_backoff_minutes=40))
    # 90-day time points: one due the day the outage starts, one in the middle of it, and a
    # backlog one (due ten days before: by the calendar attempt 2 is due as well). Retries
    # (40 min x 1, 3, 7, ... 127) outlast the outage.
    for pid, discharge in {
        "pat-a": OUTAGE_START - timedelta(days=90),
        "pat-b": OUTAGE_START - timedelta(days=89),
        "pat-c": OUTAGE_START - timedelta(days=100),
    }.items():
        feed.patient(pid, email=f"{pid}@example.invalid")
        feed.surgery(pid, pid, discharge - timedelta(days=2), discharge)
    feed.ingest()

    clock = at_local(OUTAGE_START, 0, TZ)
    dispatcher = Dispatcher(app, clock)
    start = clock.now()
    controller: Controller | None = None
    sent_at: dict[str, datetime] = {}
    try:
        for hour in range(6 * 24):  # the daemon's hourly dispatch, until the day before attempt 2
            clock.set(start + timedelta(hours=hour))
            if hour == OUTAGE_DAYS * 24:
                controller = Controller(sink, hostname=sink.host, port=sink.port)
                controller.start()
            seen = len(sink.messages)
            dispatcher.run()
            for message in sink.messages[seen:]:
                sent_at.setdefault(str(message["To"]), clock.now())
            if hour < OUTAGE_DAYS * 24:
                # While the server is down: one attempt per time point, retried, never a second.
                assert {attempt for _, attempt, _ in sends_by_status(app)} <= {1}
    finally:
        if controller is not None:
            controller.stop()

    per_patient = Counter(str(m["To"]) for m in sink.messages)
    assert per_patient == {f"{pid}@example.invalid": 1 for pid in ("pat-a", "pat-b", "pat-c")}
    assert all("three-month" in str(m["Subject"]) for m in sink.messages)
    assert all(at >= start + timedelta(days=OUTAGE_DAYS) for at in sent_at.values())
    assert sends_by_status(app) == Counter(
        {("pat-a", 1, "sent"): 1, ("pat-b", 1, "sent"): 1, ("pat-c", 1, "sent"): 1}
    )


def test_backlog_left_by_an_older_version_sends_only_the_newest_attempt(
    reminder_app: Callable[..., tuple[App, Feed]], smtp_server: SmtpSink
) -> None:
    """Pending attempts 1-3 of one time point (claimed during an outage by an older version)."""
    app, feed = reminder_app(**reminder_config(smtp_server, repeat_every_days=2))
    feed.patient("pat-1", email="one@example.invalid")
    feed.surgery("1", "pat-1", date(2025, 1, 6), date(2025, 1, 9))
    feed.ingest()
    clock = at_local(date(2025, 4, 20), 9, TZ)
    dispatcher = Dispatcher(app, clock)
    dispatcher.plan()
    claimed = clock.now() - timedelta(days=5)
    with app.engine.begin() as conn:
        reminder_id = conn.execute(
            REMINDERS.update()
            .where(REMINDERS.c.timepoint == "90d")
            .values(attempts=3, next_attempt_on=None)
            .returning(REMINDERS.c.id)
        ).scalar_one()
        for attempt in (1, 2, 3):
            conn.execute(
                SENDS.insert().values(
                    reminder_id=reminder_id,
                    attempt=attempt,
                    channel="email",
                    idempotency_key=f"legacy-{attempt}",
                    status="pending",
                    tries=1,
                    error="SMTP ConnectionRefusedError",
                    created_at=claimed + timedelta(days=attempt),
                )
            )
    report = dispatcher.run()
    assert (report.sent, report.settled) == (1, 3)
    assert len(smtp_server.messages) == 1
    assert sends_by_status(app) == Counter(
        {("pat-1", 1, "cancelled"): 1, ("pat-1", 2, "cancelled"): 1, ("pat-1", 3, "sent"): 1}
    )
    clock.advance(hours=3)
    assert dispatcher.run().sent == 0
    assert len(smtp_server.messages) == 1
