"""The coordinators' worklist of PROM reminders, and its CSV export."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from registry_adapter.app import App
from registry_store import audit
from review.queries import REMINDER_TABS, reminder_counts, reminders_all, reminders_page
from review.raw_view import MASK
from review.settings import ReviewSettings
from review.web import choice, masked_for, page_arg, registry, render, require
from scheduler.channels.worklist import csv_row, csv_writer

# Columns holding contact details: masked for the roles that see raw resources masked.
CONTACT_COLUMNS = ("mrn", "phone", "email")
_CHUNK_ROWS = 500


def site_today(app: App) -> date:
    return datetime.now(app.settings.site.tz).date()


def mask_contacts(row: dict[str, Any], masked: bool) -> dict[str, Any]:
    if not masked:
        return row
    return {**row, **{c: MASK for c in CONTACT_COLUMNS if row.get(c) not in (None, "")}}


async def reminders(request: Request) -> Response:
    user = require(request)
    app = registry(request)
    tab = choice(request, "status", REMINDER_TABS, "due")
    today = site_today(app)
    masked = masked_for(request, user)
    with app.engine.connect() as conn:
        counts = reminder_counts(conn, today)
        page_size = app.settings.section(ReviewSettings).page_size
        page = reminders_page(conn, tab, today, page_arg(request), page_size)
    rows = [mask_contacts(r, masked) for r in page.rows]
    return render(
        request,
        "reminders.html",
        {
            "section": "reminders",
            "tab": tab,
            "tabs": REMINDER_TABS,
            "counts": counts,
            "page": page,
            "rows": rows,
            "today": today,
            "masked": masked,
        },
    )


async def export(request: Request) -> Response:
    user = require(request)
    app = registry(request)
    tab = choice(request, "status", REMINDER_TABS, "due")
    today = site_today(app)
    masked = masked_for(request, user)
    audit.record_alone(
        app.engine,
        username=user.username,
        action="reminders.export",
        target=f"reminders:{tab}",
        after={"status": tab, "contacts_masked": masked, "date": today.isoformat()},
    )

    def rows() -> Iterator[str]:
        # Every tab has the worklist export's columns, so coordinators get one file layout;
        # the worklist tab's file is the CLI's (export_csv), byte for byte.
        buf = io.StringIO()
        writer = csv_writer(buf)
        with app.engine.connect() as conn:
            for n, row in enumerate(reminders_all(conn, tab, today), 1):
                writer.writerow(csv_row(mask_contacts(row, masked)))
                if n % _CHUNK_ROWS == 0:
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
