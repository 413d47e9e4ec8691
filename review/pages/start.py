"""The start page: this month at a glance (review.this_month), each figure a link into its list."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from review.pages.reminders import site_today
from review.this_month import PERIODS, this_month
from review.web import choice, registry, render, require

BAR_WIDTH = 560  # px of the completeness chart's bars (server-drawn SVG, no script)


def completeness_bars(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each time point's completed / open / missing as segments of one bar (x and width in px)."""
    bars = []
    for row in rows:
        total = row["total"] or 1
        x = 0.0
        segments = []
        for outcome in ("completed", "open", "missing"):
            width = BAR_WIDTH * row[outcome] / total
            n = row[outcome]
            segments.append({"outcome": outcome, "n": n, "x": round(x, 1), "width": round(width, 1)})
            x += width
        bars.append({**row, "segments": segments})
    return bars


async def start(request: Request) -> Response:
    require(request)
    app = registry(request)
    period = choice(request, "period", PERIODS, "month")
    today = site_today(app)
    with app.engine.connect() as conn:
        figures = this_month(conn, today, app.settings.site.tz, period)
    return render(
        request,
        "start.html",
        {
            "section": "start",
            "f": figures,
            "bars": completeness_bars(figures["completeness"]),
            "bar_width": BAR_WIDTH,
            "periods": PERIODS,
        },
    )


ROUTES = [Route("/", start, methods=["GET"])]
