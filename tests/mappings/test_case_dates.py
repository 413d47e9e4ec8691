"""Case assembly anchors cases only on performed surgeries, as of the day it runs."""

from __future__ import annotations

from datetime import date

from sqlalchemy import select, update

from mappings.cases import assemble_cases, withdraw_case
from registry_adapter.app import App
from registry_store.tables import CASES
from registry_store.tables import PROCEDURES as PROCS
from tests.mappings.test_timepoints import DEFAULTS, PATIENT, SOURCE, _surgery


def _cases(app: App, today: date) -> dict[str, tuple[str, str | None]]:
    with app.engine.begin() as conn:
        assemble_cases(conn, SOURCE, [PATIENT], app.codemaps["spine-diagnoses"], DEFAULTS, today)
        return {r.procedure_id: (r.status, r.status_reason) for r in conn.execute(select(CASES))}


def test_a_surgery_dated_after_today_is_no_case_until_its_day(sqlite_app: App) -> None:
    _surgery(sqlite_app, "p1", date(2026, 1, 10), date(2026, 1, 12))
    assert _cases(sqlite_app, date(2026, 1, 9)) == {}
    assert _cases(sqlite_app, date(2026, 1, 10)) == {"p1": ("active", None)}


def test_a_planned_procedure_anchors_no_case(sqlite_app: App) -> None:
    _surgery(sqlite_app, "p1", date(2025, 3, 10), date(2025, 3, 12))
    with sqlite_app.engine.begin() as conn:
        conn.execute(update(PROCS).values(status="preparation"))
    assert _cases(sqlite_app, date(2025, 6, 1)) == {}
    with sqlite_app.engine.begin() as conn:
        conn.execute(update(PROCS).values(status="completed"))
    assert _cases(sqlite_app, date(2025, 6, 1)) == {"p1": ("active", None)}
    # Back to planned (the surgery was postponed): the case goes, and is not called withdrawn.
    with sqlite_app.engine.begin() as conn:
        conn.execute(update(PROCS).values(status="preparation"))
    assert _cases(sqlite_app, date(2025, 6, 1)) == {"p1": ("removed", None)}


def test_a_case_withdrawn_by_hand_stays_withdrawn(sqlite_app: App) -> None:
    _surgery(sqlite_app, "p1", date(2025, 3, 10), date(2025, 3, 12))
    assert _cases(sqlite_app, date(2025, 6, 1)) == {"p1": ("active", None)}
    with sqlite_app.engine.begin() as conn:
        (cid,) = conn.execute(select(CASES.c.id)).scalars()
        before, after = withdraw_case(conn, cid, by="Dana", reason="duplicate of another site's case")
    assert before == {"status": "active", "status_reason": None}
    assert after["status_reason"] == "withdrawn by Dana: duplicate of another site's case"
    assert _cases(sqlite_app, date(2025, 6, 2)) == {"p1": ("withdrawn", after["status_reason"])}
