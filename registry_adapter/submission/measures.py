"""The site's own view of what the registry measures, per module (lumbar, cervical):
complication, return-to-OR and readmission rates, PROM completion, and mean PROM change.

Read from ``case_outcomes`` (recomputed only where they can be out of date: see
``service.current_outcomes``) and ``prom_responses``; the same figures the package carries, so
the site sees what the registry will see.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import date
from statistics import mean
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from registry_adapter.app import App
from registry_adapter.submission.service import current_outcomes, quarter_bounds
from registry_store.tables import CASES
from registry_store.tables import PROM_RESPONSES as PROMS

MODULES = ("lumbar", "cervical")
TIMEPOINTS = ("baseline", "90d", "1y")
# Score keys whose change between baseline and follow-up is reported, per instrument.
CHANGE_SCORES = {"odi": "odi", "ndi": "ndi", "promis10": "gph_t"}


def _rate(hits: int, total: int) -> float | None:
    return round(100.0 * hits / total, 1) if total else None


def quarter_of(day: date) -> str:
    return f"{day.year}Q{(day.month - 1) // 3 + 1}"


def _module_figures(
    cases: list[Any], outcomes: dict[str, dict[str, Any]], proms: dict[str, list[Any]]
) -> dict[str, Any]:
    n = len(cases)

    def had(case: Any, complication: str) -> bool:
        return any(
            c["complication"] == complication for c in outcomes.get(case.id, {}).get("complications", [])
        )

    def flag(name: str) -> int:
        return sum(1 for c in cases if outcomes.get(c.id, {}).get(name))

    completion = {
        tp: _rate(sum(1 for c in cases if any(r.timepoint == tp for r in proms.get(c.id, []))), n)
        for tp in TIMEPOINTS
    }
    changes: dict[str, dict[str, Any]] = {}
    for instrument, score in CHANGE_SCORES.items():
        for follow_up in ("90d", "1y"):
            deltas = []
            for c in cases:
                by_tp = {r.timepoint: r for r in proms.get(c.id, []) if r.instrument == instrument}
                base, later = by_tp.get("baseline"), by_tp.get(follow_up)
                if base is None or later is None:
                    continue
                a, b = base.scores.get(score), later.scores.get(score)
                if isinstance(a, int | float) and isinstance(b, int | float):
                    deltas.append(b - a)
            changes[f"{instrument}_{follow_up}"] = {
                "pairs": len(deltas),
                "mean_change": round(mean(deltas), 1) if deltas else None,
            }
    return {
        "cases": n,
        "surgical_site_infection_rate": _rate(sum(had(c, "surgical_site_infection") for c in cases), n),
        "neurological_deficit_rate": _rate(sum(had(c, "neurological_deficit") for c in cases), n),
        "return_to_or_30d_rate": _rate(flag("reoperation_30d"), n),
        "return_to_or_90d_rate": _rate(flag("reoperation_90d"), n),
        "readmission_30d_rate": _rate(flag("readmission_30d"), n),
        "readmission_90d_rate": _rate(flag("readmission_90d"), n),
        "prom_completion": completion,
        "prom_change": changes,
    }


# What the figures read of a case and of a response (not answers, codes or diagnoses: every
# JSON column read is decoded).
_CASE_COLUMNS = (CASES.c.id, CASES.c.module, CASES.c.surgery_date)
_PROM_COLUMNS = (PROMS.c.case_id, PROMS.c.timepoint, PROMS.c.instrument, PROMS.c.scores)


def _active_cases(conn: Connection) -> list[Any]:
    return list(conn.execute(select(*_CASE_COLUMNS).where(CASES.c.status == "active")).all())


def _proms(conn: Connection, case_ids: Iterable[str]) -> dict[str, list[Any]]:
    wanted = set(case_ids)
    out: dict[str, list[Any]] = defaultdict(list)
    for r in conn.execute(select(*_PROM_COLUMNS).where(PROMS.c.case_id.is_not(None))):
        if r.case_id in wanted:
            out[r.case_id].append(r)
    return out


def compute_measures(app: App, period: str | None = None) -> dict[str, Any]:
    """Figures per module for one quarter (surgery date in it), or for all cases."""
    with app.engine.begin() as conn:
        outcomes = current_outcomes(conn, app)
        cases = _active_cases(conn)
        if period:
            start, end = quarter_bounds(period)
            cases = [c for c in cases if start <= c.surgery_date <= end]
        proms = _proms(conn, (c.id for c in cases))
    return {
        "period": period.upper() if period else "all",
        "modules": {
            m: _module_figures([c for c in cases if c.module == m], outcomes, proms) for m in MODULES
        },
    }


def measures_by_quarter(app: App) -> dict[str, dict[str, Any]]:
    """The same figures for every quarter with cases (the review UI's Measures page; computed
    without writing, as a page view must not change the store)."""
    with app.engine.connect() as conn:
        outcomes = current_outcomes(conn, app, store=False)
        cases = _active_cases(conn)
        proms = _proms(conn, (c.id for c in cases))
    quarters: dict[str, list[Any]] = defaultdict(list)
    for c in cases:
        quarters[quarter_of(c.surgery_date)].append(c)
    return {
        q: {m: _module_figures([c for c in qc if c.module == m], outcomes, proms) for m in MODULES}
        for q, qc in sorted(quarters.items())
    }
