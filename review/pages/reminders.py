"""The coordinators' worklist of PROM reminders, and its CSV export."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import date, datetime

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from registry_adapter.app import App
from review import audit
from review.queries import REMINDER_TABS, reminder_counts, reminders_all, reminders_page
from review.web import choice, masked_for, page_arg, registry, render, require

COLUMNS = (
    "case_id", "source", "patient_id", "timepoint", "due_date", "window_start", "window_end", "status",
    "attempts", "next_attempt_on", "last_sent_at", "channel", "category", "surgery_date",
)  # fmt: skip
CONTACT_COLUMNS = ("mrn", "email", "phone")


def site_today(app: App) -> date:
    return datetime.now(app.settings.site.tz).date()


async def reminders(request: Request) -> Response:
    user = require(request)
    app = registry(request)
    tab = choice(request, "status", REMINDER_TABS, "due")
    today = site_today(app)
    with app.engine.connect() as conn:
        counts = reminder_counts(conn, today)
        page = reminders_page(conn, tab, today, page_arg(request), app.settings.review.page_size)
    return render(
        request,
        "reminders.html",
        {
            "section": "reminders",
            "tab": tab,
            "tabs": REMINDER_TABS,
            "counts": counts,
            "page": page,
            "today": today,
            "masked": masked_for(request, user),
        },
    )


async def export(request: Request) -> Response:
    user = require(request)
    app = registry(request)
    tab = choice(request, "status", REMINDER_TABS, "due")
    today = site_today(app)
    # Contact details only for roles that may see them; the export is audited either way.
    columns = COLUMNS if masked_for(request, user) else COLUMNS + CONTACT_COLUMNS
    with app.engine.begin() as conn:
        audit.record(
            conn,
            username=user.username,
            action="reminders.export",
            target=f"reminders:{tab}",
            after={"status": tab, "contact_columns": columns != COLUMNS, "date": today.isoformat()},
        )

    def rows() -> Iterator[str]:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        with app.engine.connect() as conn:
            for n, row in enumerate(reminders_all(conn, tab, today), 1):
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
                if n % 500 == 0:
                    yield buf.getvalue()
                    buf.seek(0)
                    buf.truncate()
        yield buf.getvalue()

    filename = f"reminders-{tab}-{today.isoformat()}.csv"
    return StreamingResponse(
        rows(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


ROUTES = [
    Route("/reminders", reminders, methods=["GET"]),
    Route("/reminders.csv", export, methods=["GET"]),
]
