"""Anchors, deaths and withdrawals through the real pipeline and planner (issue 11)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

from sqlalchemy import text

from registry_adapter.app import App
from scheduler.clock import at_local
from scheduler.dispatcher import Dispatcher
from tests.scheduler.conftest import TZ, Feed, SmtpSink, reminder_config

D = date


def reminders_of(app: App, procedure: str) -> dict[str, dict[str, object]]:
    with app.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT r.* FROM reminders r JOIN cases c ON c.id = r.case_id WHERE c.procedure_id = :p"),
            {"p": procedure},
        ).mappings()
        return {
            r["timepoint"]: {
                k: (str(v)[:10] if k.endswith(("_date", "_on", "_start", "_end")) and v else v)
                for k, v in r.items()
            }
            for r in rows
        }


def open_case_warnings(app: App) -> set[tuple[str, str]]:
    with app.engine.connect() as conn:
        query = "SELECT resource_id, code FROM mapping_errors WHERE status = 'open' AND code LIKE 'case.%'"
        return {(r.resource_id, r.code) for r in conn.execute(text(query))}


def test_death_cancels_only_time_points_open_on_the_date_of_death(
    reminder_app: Callable[..., tuple[App, Feed]],
) -> None:
    app, feed = reminder_app(**reminder_config())
    # 90d window: discharge 2024-01-09 + [60, 180] = 2024-03-09 .. 2024-07-07.
    feed.patient("pat-late", email="late@example.invalid", deceased=D(2024, 8, 1))
    feed.surgery("late", "pat-late", D(2024, 1, 6), D(2024, 1, 9))
    feed.patient("pat-early", email="early@example.invalid", deceased=D(2024, 5, 1))
    feed.surgery("early", "pat-early", D(2024, 1, 6), D(2024, 1, 9))
    feed.ingest()
    Dispatcher(app, at_local(D(2024, 9, 1), 10, TZ)).plan()
    late = reminders_of(app, "proc-late")
    # The 90d window closed before the death: its data is missing, not cancelled.
    assert (late["90d"]["status"], late["90d"]["cancel_reason"]) == ("expired", None)
    assert (late["1y"]["status"], late["1y"]["cancel_reason"]) == ("cancelled", "deceased")
    assert late["baseline"]["status"] == "missing"
    early = reminders_of(app, "proc-early")
    assert (early["90d"]["status"], early["90d"]["cancel_reason"]) == ("cancelled", "deceased")


def test_missing_discharge_falls_back_visibly_and_a_late_discharge_notes_the_move(
    reminder_app: Callable[..., tuple[App, Feed]], smtp_server: SmtpSink
) -> None:
    app, feed = reminder_app(**reminder_config(smtp_server))
    feed.patient("pat-1", email="one@example.invalid")
    feed.surgery("1", "pat-1", D(2025, 1, 6), None)  # no stay (no discharge) yet
    feed.patient("pat-2", email="two@example.invalid")
    feed.surgery("2", "pat-2", D(2025, 1, 6), D(2025, 1, 8))
    # The surgery points at a stay that ended before it (an earlier admission).
    stay = next(r for r in feed.pending if r["id"] == "enc-2")
    stay["period"] = {"start": "2024-12-30T06:00:00+01:00", "end": "2025-01-02T11:00:00+01:00"}
    feed.ingest()
    assert open_case_warnings(app) == {
        ("proc-1", "case.no_discharge"),
        ("proc-2", "case.discharge_before_surgery"),
    }
    clock = at_local(D(2025, 4, 6), 10, TZ)
    assert Dispatcher(app, clock).run().sent == 2  # 90d attempt 1 on surgery + 90 days
    first = reminders_of(app, "proc-1")
    assert (first["90d"]["anchor"], first["90d"]["due_date"]) == ("surgery_fallback", "2025-04-06")
    assert first["1y"]["anchor"] == "surgery"
    assert reminders_of(app, "proc-2")["90d"]["anchor"] == "surgery_fallback"

    # The discharge arrives: the due date moves to discharge + 90 days after attempt 1 went out.
    feed.surgery("1", "pat-1", D(2025, 1, 6), D(2025, 1, 20))
    feed.ingest()
    assert open_case_warnings(app) == {("proc-2", "case.discharge_before_surgery")}
    clock.advance(days=1)
    Dispatcher(app, clock).plan()
    moved = reminders_of(app, "proc-1")["90d"]
    assert (moved["anchor"], moved["due_date"], moved["attempts"]) == ("discharge", "2025-04-20", 1)
    assert moved["note"] == (
        "due date moved from 2025-04-06 to 2025-04-20 (anchor: discharge) after 1 attempt(s) sent,"
        " the last on 2025-04-06"
    )
    # Attempt 2 is not dated before the new due date.
    assert str(moved["next_attempt_on"]) >= "2025-04-20"
