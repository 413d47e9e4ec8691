"""Feed health: sync runs per source, the MLLP listener's ACKs, records and errors per night."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from review.chart import nightly
from review.pages.reminders import site_today
from review.queries import ack_counts, as_utc, latest_run_per_source, recent_acks, recent_runs, runs_since
from review.web import registry, render, require

CHART_DAYS = 30


def _duration(run: dict[str, object]) -> str:
    start, end = run.get("started_at"), run.get("finished_at")
    if not isinstance(start, datetime) or not isinstance(end, datetime):
        return ""
    seconds = (as_utc(end) - as_utc(start)).total_seconds()  # type: ignore[operator]
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


async def feeds(request: Request) -> Response:
    require(request)
    app = registry(request)
    now = datetime.now(UTC)
    with app.engine.connect() as conn:
        latest = latest_run_per_source(conn)
        runs = recent_runs(conn)
        acks = recent_acks(conn)
        ack_day = ack_counts(conn, now - timedelta(hours=24))
        history = runs_since(conn, now - timedelta(days=CHART_DAYS + 1))
    for run in (*latest, *runs):
        run["duration"] = _duration(run)
    chart = nightly(history, app.settings.site.tz, site_today(app), CHART_DAYS)
    return render(
        request,
        "feeds.html",
        {
            "section": "feeds",
            "latest": latest,
            "runs": runs,
            "acks": acks,
            "ack_day": ack_day,
            "chart": chart,
        },
    )


ROUTES = [Route("/feeds", feeds, methods=["GET"])]
