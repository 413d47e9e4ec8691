"""What the case page shows about submission: the case's outcomes, when it was last sent to
the registry, and its PROM trajectory (main score per time point) as a small SVG line chart."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from registry_store.tables import CASE_OUTCOMES, SUBMISSION_ITEMS, SUBMISSIONS

TIMEPOINTS = ("baseline", "90d", "1y")
# The score that sums up each instrument, and whether lower is better.
MAIN_SCORES = {"odi": ("odi", True), "ndi": ("ndi", True), "promis10": ("gph_t", False)}
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 320, 140, 36, 24, 10


@dataclass(frozen=True)
class Line:
    instrument: str
    score: str
    lower_is_better: bool
    points: list[tuple[str, float, float, float]]  # time point, value, x, y

    @property
    def path(self) -> str:
        return " ".join(f"{x},{y}" for _, _, x, y in self.points)


@dataclass(frozen=True)
class Trajectory:
    lines: list[Line]
    labels: list[tuple[str, float]]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    bottom: float = HEIGHT - BOTTOM


def trajectory(proms: Sequence[Mapping[str, Any]]) -> Trajectory | None:
    """Main score of each instrument per time point (0-100 scale), or None with under two points."""
    slot = (WIDTH - LEFT - 16) / (len(TIMEPOINTS) - 1)
    xs = {tp: round(LEFT + i * slot, 1) for i, tp in enumerate(TIMEPOINTS)}
    plot_h = HEIGHT - BOTTOM - TOP
    lines = []
    for instrument, (score, lower) in MAIN_SCORES.items():
        points = []
        for tp in TIMEPOINTS:
            values: list[float] = []
            for r in proms:
                value = (r["scores"] or {}).get(score)
                if r["instrument"] == instrument and r["timepoint"] == tp and isinstance(value, int | float):
                    values.append(float(value))
            if values:
                v = values[-1]
                points.append((tp, v, xs[tp], round(HEIGHT - BOTTOM - plot_h * min(max(v, 0), 100) / 100, 1)))
        if len(points) >= 2:
            lines.append(Line(instrument, score, lower, points))
    if not lines:
        return None
    return Trajectory(lines, [(tp, x) for tp, x in xs.items()])


def submission_context(conn: Connection, case_id: str, proms: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    outcome = conn.execute(
        select(CASE_OUTCOMES.c.outcomes, CASE_OUTCOMES.c.computed_at).where(
            CASE_OUTCOMES.c.case_id == case_id
        )
    ).first()
    last = conn.execute(
        select(SUBMISSIONS.c.period, SUBMISSIONS.c.delivered_at, SUBMISSION_ITEMS.c.action)
        .join(SUBMISSIONS, SUBMISSIONS.c.id == SUBMISSION_ITEMS.c.submission_id)
        .where(SUBMISSION_ITEMS.c.case_id == case_id)
        .order_by(SUBMISSION_ITEMS.c.id.desc())
        .limit(1)
    ).first()
    return {
        "outcome": dict(outcome.outcomes) if outcome is not None else None,
        "outcome_computed_at": outcome.computed_at if outcome is not None else None,
        "last_submission": dict(last._mapping) if last is not None else None,
        "trajectory": trajectory(proms),
    }
