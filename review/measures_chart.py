"""Measures per quarter and module as plain numbers for server-drawn SVG bar charts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from registry_adapter.submission.measures import MODULES

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 200, 44, 28, 12


@dataclass(frozen=True)
class Bar:
    quarter: str
    module: str
    value: float | None
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class MeasureChart:
    key: str
    title: str
    bars: list[Bar]
    labels: list[tuple[str, float]]  # quarter, x of its label
    ticks: list[tuple[float, float]]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    bottom: float = HEIGHT - BOTTOM


# (key in the figures, title); prom completion is nested under prom_completion.
MEASURES = (
    ("surgical_site_infection_rate", "Surgical site infection within 90 days (%)"),
    ("neurological_deficit_rate", "New neurological deficit within 90 days (%)"),
    ("return_to_or_90d_rate", "Unplanned return to the OR within 90 days (%)"),
    ("readmission_30d_rate", "Readmission within 30 days (%)"),
    ("readmission_90d_rate", "Readmission within 90 days (%)"),
    ("prom_completion.90d", "PROM completion at 90 days (%)"),
)


def _value(figures: Mapping[str, Any], key: str) -> float | None:
    if key.startswith("prom_completion."):
        node = figures.get("prom_completion", {}).get(key.split(".", 1)[1])
    else:
        node = figures.get(key)
    return float(node) if isinstance(node, int | float) else None


def charts(by_quarter: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[MeasureChart]:
    """One grouped bar chart per measure: quarters along x, a bar per module, 0-100 %."""
    quarters = sorted(by_quarter)
    plot_h = HEIGHT - BOTTOM - TOP
    slot = (WIDTH - LEFT - 8) / max(1, len(quarters))
    bar_w = max(2.0, slot * 0.36)
    out = []
    for key, title in MEASURES:
        values = {
            (q, m): _value(by_quarter[q][m], key) if by_quarter[q][m]["cases"] else None
            for q in quarters
            for m in MODULES
        }
        peak = max([5.0, *(v for v in values.values() if v is not None)])
        bars, labels = [], []
        for i, q in enumerate(quarters):
            x0 = LEFT + i * slot + slot * 0.14
            labels.append((q, round(x0 + bar_w, 1)))
            for j, m in enumerate(MODULES):
                v = values[q, m]
                h = plot_h * (v or 0.0) / peak
                bars.append(
                    Bar(
                        q,
                        m,
                        v,
                        round(x0 + j * bar_w, 1),
                        round(HEIGHT - BOTTOM - h, 1),
                        round(bar_w, 1),
                        round(h, 1),
                    )
                )
        ticks = [(round(peak * f, 1), round(HEIGHT - BOTTOM - plot_h * f, 1)) for f in (0, 0.5, 1)]
        out.append(MeasureChart(key.replace(".", "-"), title, bars, labels, ticks))
    return out
