"""Mapping errors by cause: the list, one cause, and what reviewers do about it."""

from __future__ import annotations

import contextlib
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from mappings.codemaps import CodeMapError
from mappings.engine import MappingFileError
from review import actions, csrf
from review.cause_help import info, reprocess_helps, ticket_text
from review.queries import (
    ERROR_STATUSES,
    CauseFilter,
    cause_examples,
    cause_records,
    cause_summary,
    causes_page,
    error_facets,
)
from review.raw_view import render_raw
from review.settings import ReviewSettings
from review.web import choice, masked_for, page_arg, registry, render, require, text_arg

CAUSE_ID_LEN = 16


async def causes(request: Request) -> Response:
    require(request)
    app = registry(request)
    status = choice(request, "status", ERROR_STATUSES, "open")
    with app.engine.connect() as conn:
        facets = error_facets(conn, status)
        flt = CauseFilter(
            status=status,
            code=choice(request, "code", facets["code"]),
            mapping=choice(request, "mapping", facets["mapping"]),
            resource_type=choice(request, "type", facets["resource_type"]),
            q=text_arg(request, "q"),
        )
        page = causes_page(conn, flt, page_arg(request), app.settings.section(ReviewSettings).page_size)
    titles = {c["code"]: entry.title for c in page.rows if (entry := info(c["code"])) is not None}
    return render(
        request,
        "causes.html",
        {"section": "causes", "page": page, "flt": flt, "facets": facets, "titles": titles},
    )


def _cause_id(request: Request) -> str:
    cause_id: str = request.path_params["cause_id"]
    if len(cause_id) != CAUSE_ID_LEN or not all(c in "0123456789abcdef" for c in cause_id):
        raise HTTPException(404)
    return cause_id


def _cause_context(request: Request, cause_id: str, **extra: Any) -> dict[str, Any]:
    user = require(request)
    app = registry(request)
    status = choice(request, "records", ERROR_STATUSES, "open")
    with app.engine.connect() as conn:
        summary = cause_summary(conn, cause_id)
        if summary is None:
            raise HTTPException(404)
        examples = cause_examples(conn, cause_id)
        page_size = app.settings.section(ReviewSettings).page_size
        records = cause_records(conn, cause_id, status, page_arg(request), page_size)
    masked = masked_for(request, user)
    shown = [
        {
            **{k: v for k, v in ex.items() if k != "raw"},
            "lines": render_raw(ex["raw"], masked=masked, field=ex["field"], value=ex["value"]),
        }
        for ex in examples
    ]
    # A code added to a code map file outside the UI must show as fixed here; a broken edit
    # leaves the working versions in place (re-processing names the problem).
    with contextlib.suppress(CodeMapError, MappingFileError):
        app.reload_mappings_if_changed()
    target = actions.code_target(app, summary)
    fixed = bool(target and any(m.lookup(target.system, target.code) is not None for m in target.codemaps))
    entry = info(summary["code"])
    with app.engine.connect() as conn:
        undoable = actions.last_add(conn, cause_id)
    helps, why = reprocess_helps(app, summary, entry, request.app.state.started_at, fixed)
    return {
        "section": "causes",
        "cause": summary,
        "entry": entry,
        "reprocess_helps": helps,
        "reprocess_why": why,
        "code_fixed": fixed,
        "undoable": undoable,
        "preview": None,
        "ticket": ticket_text(app.settings.site.id, summary, entry, examples),
        "examples": shown,
        "records": records,
        "records_status": status,
        "masked": masked,
        "target": target,
        "message": None,
        "error": None,
        "form": {},
        **extra,
    }


async def cause(request: Request) -> Response:
    cause_id = _cause_id(request)
    ctx = _cause_context(request, cause_id)
    # Set by the action just done (post/redirect/get); counts and codes only, no patient data.
    flash = request.session.pop("flash", None)
    ctx["message"] = flash if isinstance(flash, str) else None
    flash_error = request.session.pop("flash_error", None)  # "Re-process selected" with none ticked
    ctx["error"] = flash_error if isinstance(flash_error, str) else None
    return render(request, "cause.html", ctx)


def _refused(request: Request, cause_id: str, exc: actions.ActionError, **extra: Any) -> Response:
    """The cause page again, with why the action was refused."""
    return render(request, "cause.html", _cause_context(request, cause_id, error=str(exc), **extra), 400)


def _done(request: Request, cause_id: str, flash: str) -> Response:
    """Post/redirect/get: the cause page shows ``flash`` once (counts and codes, no patient data)."""
    request.session["flash"] = flash
    return RedirectResponse(f"/causes/{cause_id}", status_code=303)


async def ignore(request: Request) -> Response:
    user = require(request, "reviewer")
    cause_id = _cause_id(request)
    form = await csrf.checked_form(request)
    try:
        n = await run_in_threadpool(
            actions.ignore_cause, registry(request), user, cause_id, str(form.get("reason", ""))
        )
    except actions.ActionError as exc:
        return _refused(request, cause_id, exc)
    return _done(request, cause_id, f"The cause is marked ignored ({n:,} open error(s) ignored).")


async def reopen(request: Request) -> Response:
    user = require(request, "reviewer")
    cause_id = _cause_id(request)
    await csrf.checked_form(request)
    try:
        n = await run_in_threadpool(actions.reopen_cause, registry(request), user, cause_id)
    except actions.ActionError as exc:
        return _refused(request, cause_id, exc)
    return _done(request, cause_id, f"The cause is open again ({n:,} error(s) reopened).")


async def add_code(request: Request) -> Response:
    user = require(request, "reviewer")
    cause_id = _cause_id(request)
    form = await csrf.checked_form(request)
    codemap, values = _code_form(form)
    try:
        # Re-mapping can take a while for a big cause: keep the event loop free meanwhile.
        result = await run_in_threadpool(
            actions.add_code_and_reprocess, registry(request), user, cause_id, codemap, values
        )
    except actions.ActionError as exc:
        return _refused(request, cause_id, exc, form={"codemap": codemap, "values": values})
    return _done(
        request,
        cause_id,
        f"{result['system'].upper()} {result['code']} was added to {result['codemap']} and "
        + _reprocessed(result),
    )


def _code_form(form: Any) -> tuple[str, dict[str, str]]:
    codemap = str(form.get("codemap", ""))
    # Each code map has its own fieldset (value.<map>.<column>): read only the chosen map's.
    prefix = f"value.{codemap}."
    return codemap, {k.removeprefix(prefix): str(v) for k, v in form.items() if k.startswith(prefix)}


async def preview(request: Request) -> Response:
    """The add-code form's "Preview": what adding the code would do, nothing saved yet."""
    require(request, "reviewer")
    cause_id = _cause_id(request)
    form = await csrf.checked_form(request)
    codemap, values = _code_form(form)
    try:
        app = registry(request)
        result = await run_in_threadpool(actions.preview_add_code, app, cause_id, codemap, values)
    except actions.ActionError as exc:
        return _refused(request, cause_id, exc, form={"codemap": codemap, "values": values})
    ctx = _cause_context(request, cause_id, form={"codemap": codemap, "values": values}, preview=result)
    return render(request, "cause.html", ctx)


async def undo(request: Request) -> Response:
    user = require(request, "reviewer")
    cause_id = _cause_id(request)
    await csrf.checked_form(request)
    try:
        result = await run_in_threadpool(actions.undo_add_code, registry(request), user, cause_id)
    except actions.ActionError as exc:
        return _refused(request, cause_id, exc)
    return _done(
        request,
        cause_id,
        f"Undone: {result['system'].upper()} {result['code']} is no longer in {result['codemap']} "
        f"(previous version restored); {result['reprocessed']:,} record(s) re-processed, "
        f"{result['open_errors']:,} open error(s) of this cause.",
    )


async def reprocess(request: Request) -> Response:
    user = require(request, "reviewer")
    cause_id = _cause_id(request)
    await csrf.checked_form(request)
    try:
        result = await run_in_threadpool(actions.reprocess_cause, registry(request), user, cause_id)
    except actions.ActionError as exc:
        return _refused(request, cause_id, exc)
    return _done(request, cause_id, _reprocessed(result))


def _reprocessed(result: dict[str, Any]) -> str:
    return (
        f"{result['reprocessed']:,} record(s) re-processed: {result['mapped']:,} mapped, "
        f"{result['failed']:,} failed; {result['open_errors']:,} open error(s) of this cause left."
    )


ROUTES = [
    Route("/causes", causes, methods=["GET"]),
    Route("/causes/{cause_id}", cause, methods=["GET"]),
    Route("/causes/{cause_id}/ignore", ignore, methods=["POST"]),
    Route("/causes/{cause_id}/reopen", reopen, methods=["POST"]),
    Route("/causes/{cause_id}/add-code", add_code, methods=["POST"]),
    Route("/causes/{cause_id}/reprocess", reprocess, methods=["POST"]),
    Route("/causes/{cause_id}/preview", preview, methods=["POST"]),
    Route("/causes/{cause_id}/undo", undo, methods=["POST"]),
]
