"""The coordinators' worklist of PROM reminders, and its CSV export."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from registry_adapter.app import App
from review import audit
from review.queries import REMINDER_TABS, reminder_counts, reminders_all, reminders_page
from review.raw_view import MASK
from review.web import choice, masked_for, page_arg, registry, render, require
from scheduler.channels.worklist import COLUMNS, export_csv

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
        page = reminders_page(conn, tab, today, page_arg(request), app.settings.review.page_size)
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


def worklist_csv(app: App, masked: bool) -> str:
    """The coordinator worklist exactly as ``registry-adapter reminders worklist --csv`` writes it.

    ``export_csv`` writes a file: it goes to a private temporary file (mode 0600) that is
    removed at once; contacts are then masked for roles that may not see them.
    """
    fd, name = tempfile.mkstemp(prefix="worklist-", suffix=".csv")
    os.close(fd)
    path = Path(name)
    try:
        with app.engine.connect() as conn:
            export_csv(conn, path)
        text = path.read_bytes().decode("utf-8")  # as written: keep the CSV's \r\n line ends
    finally:
        path.unlink(missing_ok=True)
    if not masked:
        return text
    reader = csv.DictReader(io.StringIO(text, newline=""))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(reader.fieldnames or COLUMNS))
    writer.writeheader()
    writer.writerows(mask_contacts(row, True) for row in reader)
    return out.getvalue()


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
        if tab == "worklist":
            yield worklist_csv(app, masked)
            return
        # Every tab has the worklist export's columns, so coordinators get one file layout.
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        with app.engine.connect() as conn:
            for n, row in enumerate(reminders_all(conn, tab, today), 1):
                writer.writerow({k: "" if v is None else v for k, v in mask_contacts(row, masked).items()})
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
