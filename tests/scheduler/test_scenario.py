"""A year and a quarter of simulated days: cases from a synthetic FHIR feed through the real
pipeline, reminders planned and sent by email to a real SMTP server, twice a day."""

from __future__ import annotations

import base64
import re
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from registry_adapter.app import App
from registry_store.reminders import set_opted_out
from scheduler.channels.base import verify_link_token
from scheduler.clock import at_local
from scheduler.dispatcher import Dispatcher
from scheduler.settings import RemindersSettings
from tests.scheduler.conftest import SITE_NAME, TOKEN_SECRET, TZ, Feed, SmtpSink, days, reminder_config

D = date


def sends_by_timepoint(app: App) -> dict[tuple[str, str], list[date]]:
    out: dict[tuple[str, str], list[date]] = defaultdict(list)
    with app.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.procedure_id, r.timepoint, s.sent_at FROM reminder_sends s "
                "JOIN reminders r ON r.id = s.reminder_id JOIN cases c ON c.id = r.case_id "
                "WHERE s.status = 'sent' ORDER BY s.id"
            )
        )
        for proc, tp, sent_at in rows:
            at = sent_at if isinstance(sent_at, datetime) else datetime.fromisoformat(sent_at)
            if at.tzinfo is None:
                at = at.replace(tzinfo=UTC)
            out[(proc, tp)].append(at.astimezone(TZ).date())
    return dict(out)


def statuses(app: App) -> dict[tuple[str, str], tuple[str, int, str | None]]:
    with app.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.procedure_id, r.timepoint, r.status, r.attempts, r.cancel_reason "
                "FROM reminders r JOIN cases c ON c.id = r.case_id"
            )
        )
        return {(p, tp): (st, n, why) for p, tp, st, n, why in rows}


def test_year_of_reminders(
    reminder_app: Callable[..., tuple[App, Feed]], smtp_server: SmtpSink, tmp_path: Path
) -> None:
    templates = tmp_path / "site-templates"
    templates.mkdir()
    # The site's own words for the subject; the body falls back to the bundled template.
    (templates / "email_subject.txt.j2").write_text("{{ site_name }}: your {{ timepoint_label }} check-in\n")
    app, feed = reminder_app(**reminder_config(smtp_server, templates=str(templates)))

    # What arrives when: case resources the day after discharge, then responses and changes.
    events: dict[date, list[Callable[[], None]]] = defaultdict(list)

    def case(
        n: str,
        surgery: date,
        discharge: date | None,
        *,
        codes: tuple[str, ...] = ("22633", "22842"),
        known_on: date | None = None,
    ) -> None:
        def add() -> None:
            feed.patient(f"pat-{n}", email=f"patient-{n}@example.invalid")
            feed.surgery(n, f"pat-{n}", surgery, discharge, codes=codes)

        events[known_on or (discharge or surgery) + timedelta(days=1)].append(add)

    case("a", D(2025, 1, 6), D(2025, 1, 9))
    events[D(2025, 1, 10)].append(lambda: feed.prom("qr-a-base", "pat-a", "odi", D(2025, 1, 2)))
    case("b", D(2025, 2, 3), D(2025, 2, 5), codes=("22551", "22845"))
    events[D(2025, 5, 7)].append(lambda: feed.prom("qr-b-90", "pat-b", "ndi", D(2025, 5, 7)))
    case("c", D(2025, 3, 3), None)
    case("d", D(2025, 2, 10), D(2025, 2, 12))

    def d_dies() -> None:
        feed.patient("pat-d", email="patient-d@example.invalid", deceased=D(2025, 5, 14))

    events[D(2025, 5, 15)].append(d_dies)
    case("e", D(2025, 4, 1), D(2025, 4, 3))

    def e_opts_out() -> None:
        with app.engine.begin() as conn:
            set_opted_out(conn, "pat-e", source=None, opted_out=True)

    events[D(2025, 6, 15)].append(e_opts_out)
    case("f", D(2025, 4, 7), D(2025, 4, 8))

    def f_withdrawn() -> None:
        feed.surgery("f", "pat-f", D(2025, 4, 7), D(2025, 4, 8), status="entered-in-error")

    events[D(2025, 7, 8)].append(f_withdrawn)
    case("g", D(2025, 1, 13), D(2025, 1, 15))
    events[D(2025, 3, 21)].append(lambda: feed.prom("qr-g-90", "pat-g", "odi", D(2025, 3, 20)))
    case("h", D(2025, 5, 5), D(2025, 5, 6))
    # NDI is not a lumbar instrument here: it does not complete the lumbar 90-day time point.
    events[D(2025, 8, 6)].append(lambda: feed.prom("qr-h-90", "pat-h", "ndi", D(2025, 8, 5)))
    case("j", D(2024, 6, 3), D(2024, 6, 5), known_on=D(2025, 1, 1))

    clock = at_local(D(2025, 1, 1), 10, TZ)
    dispatcher = Dispatcher(app, clock)
    for day in days(D(2025, 1, 1), D(2026, 3, 31)):
        for event in events.get(day, []):
            event()
        if feed.pending:
            feed.ingest()
        for hour in (10, 16):  # the second run of the day must find nothing new
            clock.set(at_local(day, hour, TZ).now())
            report = dispatcher.run()
            assert report.failed == 0 and report.retrying == 0

    expected = {
        ("proc-a", "90d"): [D(2025, 4, 9), D(2025, 4, 16), D(2025, 4, 23)],
        ("proc-a", "1y"): [D(2026, 1, 6), D(2026, 1, 13), D(2026, 1, 20)],
        ("proc-b", "90d"): [D(2025, 5, 6)],  # completed by the NDI response the next day
        ("proc-b", "1y"): [D(2026, 2, 3), D(2026, 2, 10), D(2026, 2, 17)],
        # no discharge date: 90 days after surgery
        ("proc-c", "90d"): [D(2025, 6, 1), D(2025, 6, 8), D(2025, 6, 15)],
        ("proc-c", "1y"): [D(2026, 3, 3), D(2026, 3, 10), D(2026, 3, 17)],
        ("proc-d", "90d"): [D(2025, 5, 13)],  # died; nothing after
        ("proc-f", "90d"): [D(2025, 7, 7)],  # procedure entered in error; nothing after
        # response on day 64 after discharge: inside the window, before the first reminder
        ("proc-g", "1y"): [D(2026, 1, 13), D(2026, 1, 20), D(2026, 1, 27)],
        ("proc-h", "90d"): [D(2025, 8, 4), D(2025, 8, 11), D(2025, 8, 18)],
        ("proc-j", "1y"): [D(2025, 6, 3), D(2025, 6, 10), D(2025, 6, 17)],
    }
    assert sends_by_timepoint(app) == expected

    final = statuses(app)
    assert final[("proc-a", "baseline")][0] == "completed"
    assert final[("proc-c", "baseline")][0] == "missing"
    assert final[("proc-a", "90d")][:2] == ("expired", 3)
    assert final[("proc-a", "1y")][:2] == ("sent", 3)
    assert final[("proc-b", "90d")][:2] == ("completed", 1)
    assert final[("proc-g", "90d")][:2] == ("completed", 0)
    assert final[("proc-h", "90d")][:2] == ("expired", 3)
    assert final[("proc-j", "90d")][:2] == ("expired", 0)
    assert final[("proc-d", "90d")] == ("cancelled", 1, "deceased")
    assert final[("proc-d", "1y")] == ("cancelled", 0, "deceased")
    assert final[("proc-e", "90d")] == ("cancelled", 0, "opted_out")
    assert final[("proc-f", "1y")] == ("cancelled", 0, "case_withdrawn")
    with app.engine.connect() as conn:
        why = conn.execute(text("SELECT status_reason FROM cases WHERE procedure_id = 'proc-f'")).scalar_one()
    assert why == "procedure entered-in-error"

    # The SMTP server received exactly these messages, one per send, each once.
    total = sum(len(v) for v in expected.values())
    assert len(smtp_server.messages) == total
    assert len({m["Message-ID"] for m in smtp_server.messages}) == total
    per_recipient: dict[str, int] = defaultdict(int)
    for m in smtp_server.messages:
        per_recipient[str(m["To"])] += 1
    assert per_recipient["patient-a@example.invalid"] == 6
    assert per_recipient["patient-d@example.invalid"] == 1
    assert "patient-e@example.invalid" not in per_recipient

    # Site words, and a link whose token names only the reminder and attempt.
    msg = next(m for m in smtp_server.messages if m["To"] == "patient-b@example.invalid")
    assert msg["Subject"] == f"{SITE_NAME}: your three-month check-in"
    body = msg.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "three-month questionnaire" in body and SITE_NAME in body
    token = re.search(r"https://proms\.lakeside\.example/r/(\S+)", body).group(1)  # type: ignore[union-attr]
    decoded = verify_link_token(TOKEN_SECRET, token, max_age_days=100_000)
    with app.engine.connect() as conn:
        rid = conn.execute(
            text("SELECT id FROM reminders WHERE case_id = 'feed:proc-b' AND timepoint = '90d'")
        ).scalar_one()
    assert decoded == (rid, 1)
    payload = base64.urlsafe_b64decode(token.split(".")[0] + "==").decode()
    for phi in ("pat-b", "proc-b", "patient-b", "Robin", "Testperson", "MRN", "1961"):
        assert phi not in payload and phi not in token
    assert verify_link_token("another-secret", token, 100_000) is None
    for m in smtp_server.messages:
        assert "Robin" not in m.as_string() and "MRN-" not in m.as_string()


def test_replanning_moves_unsent_and_keeps_history(
    reminder_app: Callable[..., tuple[App, Feed]], smtp_server: SmtpSink
) -> None:
    app, feed = reminder_app(**reminder_config(smtp_server))
    feed.patient("pat-1", email="one@example.invalid")
    feed.surgery("1", "pat-1", D(2025, 1, 6), D(2025, 1, 9))
    feed.ingest()
    clock = at_local(D(2025, 4, 9), 10, TZ)
    dispatcher = Dispatcher(app, clock)
    assert dispatcher.run().sent == 1  # 90d attempt 1 on the due date

    # The hospital corrects the discharge date: the window and the unsent attempts move.
    feed.surgery("1", "pat-1", D(2025, 1, 6), D(2025, 1, 20))
    feed.ingest()
    dispatcher.plan()
    again = dispatcher.plan()
    assert again.updated == 0 and again.created == 0  # idempotent
    with app.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT due_date, attempts, next_attempt_on, status FROM reminders "
                "WHERE case_id = 'feed:proc-1' AND timepoint = '90d'"
            )
        ).one()
        sends = conn.execute(text("SELECT count(*) FROM reminder_sends WHERE status = 'sent'")).scalar_one()
    assert str(row.due_date)[:10] == "2025-04-20"
    assert row.attempts == 1 and row.status == "sent"
    # attempt 2: planned due + 7 = 04-27 (and at least 7 days after the real send on 04-09)
    assert str(row.next_attempt_on)[:10] == "2025-04-27"
    assert sends == 1
    for day in days(D(2025, 4, 10), D(2025, 5, 10)):
        clock.set(at_local(day, 10, TZ).now())
        dispatcher.run()
    assert sends_by_timepoint(app)[("proc-1", "90d")] == [D(2025, 4, 9), D(2025, 4, 27), D(2025, 5, 4)]


def test_unreachable_patient_goes_to_worklist(
    reminder_app: Callable[..., tuple[App, Feed]], smtp_server: SmtpSink, tmp_path: Path
) -> None:
    from scheduler.channels.worklist import export_csv

    app, feed = reminder_app(**reminder_config(smtp_server))
    feed.patient("pat-1", phone="+1 555 0100")  # no email address
    feed.surgery("1", "pat-1", D(2025, 1, 6), D(2025, 1, 9))
    feed.ingest()
    report = Dispatcher(app, at_local(D(2025, 4, 9), 10, TZ)).run()
    assert report.unreachable == 1 and report.sent == 0 and not smtp_server.messages
    out = tmp_path / "worklist.csv"
    with app.engine.connect() as conn:
        assert export_csv(conn, out) == 1
    lines = out.read_text().splitlines()
    assert lines[0].startswith("reminder_id,case_id,procedure_id")
    assert "proc-1" in lines[1] and "+1 555 0100" in lines[1] and "unreachable" in lines[1]


def test_quiet_hours_and_daily_cap(
    reminder_app: Callable[..., tuple[App, Feed]], smtp_server: SmtpSink
) -> None:
    app, feed = reminder_app(**reminder_config(smtp_server, daily_cap=2))
    for n in range(5):
        feed.patient(f"pat-{n}", email=f"p{n}@example.invalid")
        feed.surgery(str(n), f"pat-{n}", D(2025, 1, 6), D(2025, 1, 9))
    feed.ingest()
    clock = at_local(D(2025, 4, 9), 7, TZ)  # 07:00: inside the default quiet hours (20:00-08:00)
    dispatcher = Dispatcher(app, clock)
    assert dispatcher.run().quiet_hours and not smtp_server.messages
    clock.set(at_local(D(2025, 4, 9), 8, TZ).now())
    report = dispatcher.run()
    assert (report.sent, report.capped) == (2, 3)
    clock.set(at_local(D(2025, 4, 9), 15, TZ).now())
    assert dispatcher.run().sent == 0  # cap reached for today
    clock.set(at_local(D(2025, 4, 10), 9, TZ).now())
    assert dispatcher.run().sent == 2
    clock.set(at_local(D(2025, 4, 11), 9, TZ).now())
    assert dispatcher.run().sent == 1
    assert len(smtp_server.messages) == 5
    # A late first attempt pushes the second one back: 7 days after it really went out.
    with app.engine.connect() as conn:
        nxt = sorted(
            str(r[0])[:10]
            for r in conn.execute(
                select(text("next_attempt_on"))
                .select_from(text("reminders"))
                .where(text("timepoint = '90d'"))
            )
        )
    assert nxt == ["2025-04-16", "2025-04-16", "2025-04-17", "2025-04-17", "2025-04-18"]


def test_worklist_channel_and_send_now(
    reminder_app: Callable[..., tuple[App, Feed]], smtp_server: SmtpSink, tmp_path: Path
) -> None:
    """Email where there is an address, the coordinator worklist where there is none."""
    from scheduler.channels.worklist import export_csv

    app, feed = reminder_app(**reminder_config(smtp_server, channels=["email", "worklist"]))
    feed.patient("pat-1", email="one@example.invalid")
    feed.patient("pat-2", phone="+1 555 0102")
    feed.surgery("1", "pat-1", D(2025, 1, 6), D(2025, 1, 9))
    feed.surgery("2", "pat-2", D(2025, 1, 6), D(2025, 1, 9))
    feed.ingest()
    clock = at_local(D(2025, 4, 9), 10, TZ)
    report = Dispatcher(app, clock).run()
    assert sorted((i["procedure_id"], tuple(ch for ch in i["channels"])) for i in report.items) == [
        ("proc-1", ("email",)),
        ("proc-2", ("worklist",)),
    ]
    assert len(smtp_server.messages) == 1
    out = tmp_path / "worklist.csv"
    with app.engine.connect() as conn:
        assert export_csv(conn, out) == 1
    assert "proc-2" in out.read_text() and "+1 555 0102" in out.read_text()

    # Staff send the next reminder now, before its date (attempt 2 is planned for 04-16).
    clock.advance(days=2)
    assert Dispatcher(app, clock).run().sent == 0
    now = Dispatcher(app, clock).run(case_id="feed:proc-1")
    assert [(i["timepoint"], i["attempt"]) for i in now.items] == [("90d", 2)]
    assert len(smtp_server.messages) == 2
    with app.engine.connect() as conn:
        nxt = conn.execute(
            text("SELECT next_attempt_on FROM reminders WHERE case_id = 'feed:proc-1' AND timepoint = '90d'")
        ).scalar_one()
    # An early send does not pull the rest of the plan forward: attempt 3 stays on its date.
    assert str(nxt)[:10] == "2025-04-23"


def test_not_done_procedure_withdraws_its_case_and_says_why(
    reminder_app: Callable[..., tuple[App, Feed]], smtp_server: SmtpSink
) -> None:
    """A procedure set to not-done withdraws its case (with the reason), which cancels what is
    pending; a stopped one stays a case. (``reminders.cancel_procedure_statuses`` is gone:
    with the bundled mapping it never fired, the case was silently "removed".)"""
    app, feed = reminder_app(**reminder_config(smtp_server))
    for n in ("1", "2"):
        feed.patient(f"pat-{n}", email=f"p{n}@example.invalid")
        feed.surgery(n, f"pat-{n}", D(2025, 1, 6), D(2025, 1, 9))
    feed.ingest()
    clock = at_local(D(2025, 4, 9), 10, TZ)
    dispatcher = Dispatcher(app, clock)
    assert dispatcher.run().sent == 2  # 90d attempt 1 for both

    feed.surgery("1", "pat-1", D(2025, 1, 6), D(2025, 1, 9), status="not-done")
    feed.surgery("2", "pat-2", D(2025, 1, 6), D(2025, 1, 9), status="stopped")
    feed.ingest()
    with app.engine.connect() as conn:
        rows = conn.execute(text("SELECT procedure_id, status, status_reason FROM cases"))
        cases = {p: (st, why) for p, st, why in rows}
    assert cases == {"proc-1": ("withdrawn", "procedure not-done"), "proc-2": ("active", None)}
    for day in days(D(2025, 4, 10), D(2025, 5, 10)):
        clock.set(at_local(day, 10, TZ).now())
        dispatcher.run()

    final = statuses(app)
    assert final[("proc-1", "90d")] == ("cancelled", 1, "case_withdrawn")
    assert final[("proc-1", "1y")] == ("cancelled", 0, "case_withdrawn")
    assert final[("proc-2", "90d")][:2] == ("sent", 3)
    sent = sends_by_timepoint(app)
    assert sent[("proc-1", "90d")] == [D(2025, 4, 9)]  # history kept, nothing after the change
    assert len(smtp_server.messages) == 4


def test_old_cancel_procedure_statuses_key_still_loads(make_app: Callable[..., App]) -> None:
    with pytest.warns(FutureWarning, match="cancel_procedure_statuses"):
        app = make_app(sources=[], reminders={"cancel_procedure_statuses": ["not-done"]})
    assert not hasattr(app.settings.section(RemindersSettings), "cancel_procedure_statuses")
