"""A patient who answered is never reminded, even when the answers cannot be scored."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

from sqlalchemy import text

from mappings.proms import build_questionnaire_response
from registry_adapter.app import App
from scheduler.clock import at_local
from scheduler.dispatcher import Dispatcher
from tests.scheduler.conftest import TZ, Feed, SmtpSink, local_dt, reminder_config


def test_unscorable_answer_completes_the_time_point(
    reminder_app: Callable[..., tuple[App, Feed]], smtp_server: SmtpSink
) -> None:
    app, feed = reminder_app(**reminder_config(smtp_server))
    feed.patient("pat-1", email="one@example.invalid")
    feed.surgery("1", "pat-1", date(2025, 1, 6), date(2025, 1, 9))
    # Three ODI sections left out: more than the one the scoring rules allow.
    odi = feed.instruments["odi"]
    answers = {f"odi{n}": (None if n in (4, 6, 8) else 2) for n in range(1, 11)}
    feed.pending.append(
        build_questionnaire_response(
            odi, answers, qr_id="qr-90d", patient_ref="Patient/pat-1", authored=local_dt(date(2025, 4, 2))
        )
    )
    feed.ingest()
    with app.engine.connect() as conn:
        stored = conn.execute(text("SELECT timepoint, scores FROM prom_responses")).one()
        error = conn.execute(
            text("SELECT code, severity, message FROM mapping_errors WHERE severity = 'error'")
        ).one()
    assert stored.timepoint == "90d"
    assert (error.code, error.severity) == ("prom.not_scorable", "error")
    assert "odi4, odi6, odi8" in error.message

    report = Dispatcher(app, at_local(date(2025, 4, 9), 10, TZ)).run()
    assert report.sent == 0 and not smtp_server.messages
