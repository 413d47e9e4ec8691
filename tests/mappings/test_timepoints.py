"""PROM time points: case assembly places each response on a case and time point by its date.

Rows are written straight into a real migrated database and ``assemble_cases`` runs on them,
so each test controls the surgery, discharge and completion dates to the day.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select

from mappings.cases import assemble_cases
from registry_adapter.app import App
from registry_adapter.config import TimepointWindow
from registry_store.tables import ENCOUNTERS as ENCS
from registry_store.tables import PROCEDURES as PROCS
from registry_store.tables import PROM_RESPONSES as PROMS

SOURCE = "s"
PATIENT = "pat-1"
DEFAULTS: dict[str, TimepointWindow] = {
    "baseline": TimepointWindow(anchor="surgery", due_days=0, window_start_days=-90, window_end_days=0),
    "90d": TimepointWindow(anchor="discharge", due_days=90, window_start_days=60, window_end_days=180),
    "1y": TimepointWindow(anchor="surgery", due_days=365, window_start_days=300, window_end_days=456),
}


def _surgery(app: App, proc_id: str, surgery: date, discharge: date | None = None) -> None:
    """One lumbar discectomy; with ``discharge``, in a stay of its own."""
    enc_id = f"enc-{proc_id}" if discharge else None
    with app.engine.begin() as conn:
        if discharge:
            conn.execute(
                insert(ENCS),
                [
                    {
                        "source": SOURCE,
                        "id": enc_id,
                        "patient_id": PATIENT,
                        "admit_date": surgery,
                        "discharge_date": discharge,
                    }
                ],
            )
        conn.execute(
            insert(PROCS),
            [
                {
                    "source": SOURCE,
                    "id": proc_id,
                    "patient_id": PATIENT,
                    "encounter_id": enc_id,
                    "surgery_date": surgery,
                    "codes": ["cpt|63030"],
                    "category": "lumbar_discectomy",
                    "module": "lumbar",
                    "role": "index",
                    "rank": 50,
                    "reason_condition_ids": [],
                    "reason_codes": [],
                }
            ],
        )


def _responses(app: App, days: Mapping[str, date]) -> None:
    with app.engine.begin() as conn:
        conn.execute(
            insert(PROMS),
            [
                {
                    "source": SOURCE,
                    "id": rid,
                    "patient_id": PATIENT,
                    "instrument": "odi",
                    "completion_date": day,
                    "scores": {},
                    "answers": {},
                }
                for rid, day in days.items()
            ],
        )


def _placed(app: App, timepoints: Mapping[str, Any]) -> dict[str, tuple[str | None, str | None]]:
    with app.engine.begin() as conn:
        assemble_cases(conn, SOURCE, [PATIENT], app.codemaps["spine-diagnoses"], timepoints)
        return {r.id: (r.case_id, r.timepoint) for r in conn.execute(select(PROMS))}


def test_site_windows_replace_the_defaults_and_their_edges_are_inclusive(sqlite_app: App) -> None:
    surgery, discharge = date(2025, 3, 10), date(2025, 3, 14)
    _surgery(sqlite_app, "p1", surgery, discharge)
    site = {
        "preop": TimepointWindow(anchor="surgery", due_days=-14, window_start_days=-30, window_end_days=-1),
        "6w": TimepointWindow(anchor="discharge", due_days=42, window_start_days=28, window_end_days=70),
        "2y": TimepointWindow(anchor="surgery", due_days=730, window_start_days=640, window_end_days=820),
    }
    s, d = surgery, discharge
    _responses(
        sqlite_app,
        {
            "pre-first-day": s - timedelta(30),
            "pre-too-early": s - timedelta(31),
            "pre-last-day": s - timedelta(1),
            "surgery-day": s,  # the default baseline window would take it; this site's does not
            "6w-first-day": d + timedelta(28),
            "6w-too-early": d + timedelta(27),
            "6w-last-day": d + timedelta(70),
            "6w-too-late": d + timedelta(71),
            "90d-default-due": d + timedelta(90),  # only in the default 90d window
            "2y-first-day": s + timedelta(640),
            "2y-last-day": s + timedelta(820),
            "2y-too-late": s + timedelta(821),
        },
    )
    case = "s:p1"
    assert _placed(sqlite_app, site) == {
        "pre-first-day": (case, "preop"),
        "pre-too-early": (None, None),
        "pre-last-day": (case, "preop"),
        "surgery-day": (None, None),
        "6w-first-day": (case, "6w"),
        "6w-too-early": (None, None),
        "6w-last-day": (case, "6w"),
        "6w-too-late": (None, None),
        "90d-default-due": (None, None),
        "2y-first-day": (case, "2y"),
        "2y-last-day": (case, "2y"),
        "2y-too-late": (None, None),
    }
    # Back to the default windows: the same responses move (assembly re-places them every run).
    placed = _placed(sqlite_app, DEFAULTS)
    assert placed["surgery-day"] == (case, "baseline")
    assert placed["90d-default-due"] == (case, "90d")
    assert placed["2y-first-day"] == (None, None)


def test_a_discharge_window_counts_from_surgery_when_the_stay_is_unknown(sqlite_app: App) -> None:
    surgery = date(2025, 3, 10)
    _surgery(sqlite_app, "p1", surgery)  # no Encounter: discharge date unknown
    _responses(sqlite_app, {"r60": surgery + timedelta(60), "r59": surgery + timedelta(59)})
    assert _placed(sqlite_app, DEFAULTS) == {"r60": ("s:p1", "90d"), "r59": (None, None)}


@pytest.mark.parametrize(
    ("offset_from_second_discharge", "expected"),
    [
        # A second surgery 9 months after the first: the first case's 1-year window
        # (day 300-456 after surgery) overlaps the second case's 90-day window (day 60-180
        # after discharge). The response goes to the time point whose due date is nearest.
        (75, ("s:p2", "90d")),  # 15 days before p2's 90d due date, 22 before p1's 1y
        (110, ("s:p1", "1y")),  # 20 days after p2's 90d due date, 13 after p1's 1y
        (170, ("s:p1", "1y")),  # still in both windows: 80 vs 73 days off
    ],
)
def test_overlapping_windows_of_two_cases_go_to_the_nearest_due_date(
    sqlite_app: App, offset_from_second_discharge: int, expected: tuple[str, str]
) -> None:
    first, second = date(2024, 1, 10), date(2024, 10, 1)
    second_discharge = second + timedelta(3)
    _surgery(sqlite_app, "p1", first, first + timedelta(2))
    _surgery(sqlite_app, "p2", second, second_discharge)
    day = second_discharge + timedelta(offset_from_second_discharge)
    # The premise: the day is inside both windows.
    assert 300 <= (day - first).days <= 456 and 60 <= offset_from_second_discharge <= 180
    _responses(sqlite_app, {"r": day, "baseline-of-second": second - timedelta(5)})
    placed = _placed(sqlite_app, DEFAULTS)
    assert placed["r"] == expected
    assert placed["baseline-of-second"] == ("s:p2", "baseline")
