"""The coordinators' worklist of PROM reminders, its CSV export, what coordinators record on
it (call outcomes, notes, assignments, call-backs, completion by phone or on paper, opt-out),
and each reminder's page with its history."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from registry_adapter.app import App
from registry_store import audit, worklist
from registry_store.tables import CASES, REMINDERS
from registry_store.timeutil import utcnow
from review import csrf
from review.phone_answers import AnswersError, enter_answers, instruments_for
from review.queries import (
    REMINDER_TABS,
    WORKLIST_SORTS,
    WorklistView,
    reminder_counts,
    reminders_all,
    reminders_page,
)
from review.raw_view import MASK
from review.settings import ReviewSettings
from review.this_month import OUTCOME_STATUSES, PERIODS, in_period, period_bounds
from review.web import choice, date_arg, id_param, masked_for, page_arg, registry, render, require, text_arg
from review.worklist_view import (
    OUTCOME_NAMES,
    REASONS,
    channel_outages,
    days_left,
    delivery_status,
    latest_sends,
    reason_to_call,
    reminder_history,
    tel_href,
)
from scheduler.channels.worklist import calls_due_on, csv_row, csv_writer
from scheduler.replan import replan
from scheduler.settings import RemindersSettings

# Columns holding contact details: masked for the roles that see raw resources masked.
CONTACT_COLUMNS = ("mrn", "phone", "email")
_CHUNK_ROWS = 500


def site_today(app: App) -> date:
    return datetime.now(app.settings.site.tz).date()


def _calls_on(app: App, today: date) -> date | None:
    return calls_due_on(app.settings.section(RemindersSettings).enabled, today)


def list_filters(request: Request, today: date) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The date and period filters of the reminder lists (``surgery_from``/``surgery_to``;
    ``period`` month|quarter with ``timepoint`` and ``outcome``, as the start page links them)."""
    where: list[Any] = []
    shown: dict[str, Any] = {}
    surgery_from, surgery_to = date_arg(request, "surgery_from"), date_arg(request, "surgery_to")
    if surgery_from:
        where.append(CASES.c.surgery_date >= surgery_from)
    if surgery_to:
        where.append(CASES.c.surgery_date <= surgery_to)
    shown.update(surgery_from=surgery_from, surgery_to=surgery_to)
    period = choice(request, "period", PERIODS)
    if period:
        start, end = period_bounds(today, period)
        where.append(in_period(start, end, today))
        shown.update(period=period, period_start=start, period_end=end)
    timepoint = text_arg(request, "timepoint", 16)
    if timepoint:
        where.append(REMINDERS.c.timepoint == timepoint)
        shown["timepoint"] = timepoint
    outcome = choice(request, "outcome", tuple(OUTCOME_STATUSES))
    if outcome:
        where.append(REMINDERS.c.status.in_(OUTCOME_STATUSES[outcome]))
        shown["outcome"] = outcome
    return tuple(where), shown


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
    calls_on = _calls_on(app, today)
    view = WorklistView(
        reason=choice(request, "reason", tuple(REASONS)),
        sort=choice(request, "sort", WORKLIST_SORTS, "due"),
        assigned=text_arg(request, "assigned"),
    )
    where, filters = list_filters(request, today)
    with app.engine.connect() as conn:
        counts = reminder_counts(conn, today, calls_on)
        page = reminders_page(
            conn,
            tab,
            today,
            page_arg(request),
            app.settings.section(ReviewSettings).page_size,
            calls_on,
            view,
            where,
        )
        latest = latest_sends(conn, [r["reminder_id"] for r in page.rows])
        outages = channel_outages(conn, utcnow())
    down = {o.channel for o in outages}
    rows = []
    for r in page.rows:
        last = latest.get(r["reminder_id"])
        reason, reason_words = reason_to_call(r, last, today)
        rows.append(
            {
                **mask_contacts(r, masked),
                "shown_status": delivery_status(r, last),
                "reason": reason,
                "reason_words": reason_words,
                "days_left": days_left(r, today),
                "tel": None if masked else tel_href(r.get("phone")),
                "outcome_words": OUTCOME_NAMES.get(str(r.get("last_outcome")), ""),
                # One banner says the channel is down; the row only points to it.
                "channel_down": bool(last and last["channel"] in down and last.get("error")),
            }
        )
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
            "view": view,
            "filters": filters,
            "tz_name": str(app.settings.site.tz),
            "reasons": REASONS,
            "outages": outages,
            "down_channels": down,
            "manual_calls": calls_on is not None,
            "message": request.session.pop("flash", None),
        },
    )


async def export(request: Request) -> Response:
    user = require(request)
    app = registry(request)
    tab = choice(request, "status", REMINDER_TABS, "due")
    today = site_today(app)
    masked = masked_for(request, user)
    where, _ = list_filters(request, today)
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
            for n, row in enumerate(reminders_all(conn, tab, today, _calls_on(app, today), where), 1):
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


def _reminder_id(request: Request) -> int:
    return id_param(request, "reminder_id")


async def reminder(request: Request) -> Response:
    """One reminder: its case and patient, every attempt with its outcome, link clicks and
    coordinator actions, and the forms to record what was done."""
    user = require(request)
    app = registry(request)
    rid = _reminder_id(request)
    masked = masked_for(request, user)
    today = site_today(app)
    with app.engine.connect() as conn:
        history = reminder_history(conn, rid)
        if history is None:
            raise HTTPException(404)
        latest = latest_sends(conn, [rid]).get(rid)
    item = mask_contacts(history["reminder"], masked)
    return render(
        request,
        "reminder.html",
        {
            "section": "reminders",
            "r": item,
            "shown_status": delivery_status(item, latest),
            "tel": None if masked else tel_href(history["reminder"].get("phone")),
            "days_left": days_left(item, today),
            "sends": history["sends"],
            "clicks": history["clicks"],
            "actions": history["actions"],
            "outcomes": OUTCOME_NAMES,
            "today": today,
            "masked": masked,
            "message": request.session.pop("flash", None),
            "error": request.session.pop("flash_error", None),
        },
    )


def _date_field(form: Any, name: str, rid: int, *, required: bool) -> date | None:
    raw = str(form.get(name, "")).strip()
    if not raw:
        if required:
            raise worklist.WorklistError(f"reminder {rid}: {name.replace('_', ' ')} is required")
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise worklist.WorklistError(
            f"reminder {rid}: {name.replace('_', ' ')} must be a date (YYYY-MM-DD)"
        ) from None


def _apply(app: App, username: str, rid: int, form: Any, today: date) -> worklist.Done:
    action = str(form.get("action", ""))
    note = str(form.get("note", "")) or None
    if action == "call":
        return worklist.record_call(app.engine, rid, username, str(form.get("outcome", "")), note)
    if action == "note":
        return worklist.add_note(app.engine, rid, username, str(form.get("note", "")))
    if action == "assign":
        return worklist.assign(app.engine, rid, username, str(form.get("assignee", "")))
    if action == "call_back":
        return worklist.set_call_back(
            app.engine, rid, username, _date_field(form, "call_back_on", rid, required=False)
        )
    if action == "complete":
        on = _date_field(form, "completed_on", rid, required=False) or today
        return worklist.record_completion(app.engine, rid, username, str(form.get("how", "")), on, note)
    if action == "opt_out":
        return worklist.record_opt_out(app.engine, rid, username, note)
    raise worklist.WorklistError(f"reminder {rid}: unknown action {action[:40]!r}")


DONE_WORDS = {
    "call": "Call outcome recorded.",
    "note": "Note added.",
    "assign": "Assignment saved.",
    "call_back": "Call-back date saved.",
    "complete": "Time point recorded as completed; its reminders have stopped.",
    "opt_out": "The patient is opted out; their open reminders are cancelled.",
}


async def act(request: Request) -> Response:
    """POST /reminders/{id}/act: record one coordinator action, then back to where it was done."""
    user = require(request, "reviewer")
    app = registry(request)
    rid = _reminder_id(request)
    form = await csrf.checked_form(request)
    back = str(form.get("back", ""))
    # Only our own pages: never an open redirect.
    target = back if back.startswith("/reminders") and "//" not in back else f"/reminders/{rid}"
    try:
        done = await run_in_threadpool(_apply, app, user.username, rid, form, site_today(app))
    except worklist.WorklistError as exc:
        request.session["flash_error"] = str(exc)
        return RedirectResponse(f"/reminders/{rid}", status_code=303)
    if done.replan:
        # Stop the reminders now, not at the next dispatch.
        await run_in_threadpool(replan, app, f"worklist.{done.action}")
    request.session["flash"] = DONE_WORDS[done.action]
    return RedirectResponse(target, status_code=303)


async def answers_form(request: Request) -> Response:
    """Enter the answers a patient gave by phone or on paper, for one instrument."""
    require(request, "reviewer")
    app = registry(request)
    rid = _reminder_id(request)
    with app.engine.connect() as conn:
        history = reminder_history(conn, rid)
    if history is None:
        raise HTTPException(404)
    item = history["reminder"]
    choices = instruments_for(app, item.get("module"))
    chosen = request.query_params.get("instrument") or (choices[0].id if choices else "")
    instrument = next((i for i in choices if i.id == chosen), None)
    return render(
        request,
        "answers.html",
        {
            "section": "reminders",
            "r": item,
            "choices": choices,
            "instrument": instrument,
            "today": site_today(app),
            "error": request.session.pop("flash_error", None),
        },
    )


async def answers_save(request: Request) -> Response:
    user = require(request, "reviewer")
    app = registry(request)
    rid = _reminder_id(request)
    form = await csrf.checked_form(request)
    fields = {k: str(v) for k, v in form.items()}
    with app.engine.connect() as conn:
        history = reminder_history(conn, rid)
    if history is None:
        raise HTTPException(404)
    instrument_id = fields.get("instrument", "")
    try:
        on = _date_field(fields, "completed_on", rid, required=False) or site_today(app)
        response_id = await run_in_threadpool(
            enter_answers, app, user.username, history["reminder"], instrument_id, fields,
            fields.get("how", "phone"), on,
        )  # fmt: skip
    except (AnswersError, worklist.WorklistError) as exc:
        request.session["flash_error"] = str(exc)
        return RedirectResponse(f"/reminders/{rid}/answers?instrument={instrument_id}", status_code=303)
    await run_in_threadpool(replan, app, "worklist.answers")
    request.session["flash"] = (
        f"Answers saved and scored as response {response_id}; its reminders have stopped."
    )
    return RedirectResponse(f"/reminders/{rid}", status_code=303)


ROUTES = [
    Route("/reminders", reminders, methods=["GET"]),
    Route("/reminders/{reminder_id}/answers", answers_form, methods=["GET"]),
    Route("/reminders/{reminder_id}/answers", answers_save, methods=["POST"]),
    Route("/reminders.csv", export, methods=["GET"]),
    Route("/reminders/{reminder_id}", reminder, methods=["GET"]),
    Route("/reminders/{reminder_id}/act", act, methods=["POST"]),
]
