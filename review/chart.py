"""Records and errors per night as plain numbers for a server-drawn SVG bar chart."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from review.queries import as_utc

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 220, 48, 28, 12


@dataclass(frozen=True)
class Bar:
    day: date
    records: int
    errors: int
    x: float
    width: float
    records_y: float
    records_h: float
    errors_y: float
    errors_h: float
    label: bool  # print the date under this bar (every few days, to stay legible)


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    peak: int
    ticks: list[tuple[int, float]]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    bottom: float = HEIGHT - BOTTOM


def nightly(runs: Iterable[dict[str, Any]], tz: ZoneInfo, today: date, days: int = 30) -> Chart:
    """Sum received and failed records of the runs per site-local day, last ``days`` days."""
    per_day: dict[date, list[int]] = {today - timedelta(days=i): [0, 0] for i in range(days)}
    for run in runs:
        started = as_utc(run["started_at"])
        if not isinstance(started, datetime):
            continue
        day = started.astimezone(tz).date()
        if day in per_day:
            counts = run["counts"] or {}
            per_day[day][0] += int(counts.get("received", 0) or 0)
            per_day[day][1] += int(counts.get("failed", 0) or 0)
    peak = max([1, *(v[0] for v in per_day.values()), *(v[1] for v in per_day.values())])
    plot_h = HEIGHT - BOTTOM - TOP
    slot = (WIDTH - LEFT - 8) / days
    bar_w = max(2.0, slot * 0.38)
    bars = []
    for i, day in enumerate(sorted(per_day)):
        rec, err = per_day[day]
        x = LEFT + i * slot + slot * 0.1
        rh, eh = plot_h * rec / peak, plot_h * err / peak
        bars.append(
            Bar(
                day=day,
                records=rec,
                errors=err,
                x=round(x, 1),
                width=round(bar_w, 1),
                records_y=round(HEIGHT - BOTTOM - rh, 1),
                records_h=round(rh, 1),
                errors_y=round(HEIGHT - BOTTOM - eh, 1),
                errors_h=round(eh, 1),
                label=(days - 1 - i) % 7 == 0,
            )
        )
    ticks = [(round(peak * f), round(HEIGHT - BOTTOM - plot_h * f, 1)) for f in (0, 0.5, 1)]
    return Chart(bars=bars, peak=peak, ticks=ticks)
