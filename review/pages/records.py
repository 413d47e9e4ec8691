"""A staged record drilled down (review.record_view)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from review import csrf
from review.actions import ActionError
from review.raw_view import render_raw
from review.record_reprocess import back_to, parse_ids, reprocess_records, summary
from review.record_view import record_detail
from review.web import id_param, masked_for, registry, render, require


async def record(request: Request) -> Response:
    user = require(request)
    staging_id = id_param(request, "staging_id")
    masked = masked_for(request, user)
    with registry(request).engine.connect() as conn:
        detail = record_detail(conn, staging_id, masked)
    if detail is None:
        raise HTTPException(404)
    staged = detail["staged"]
    first = detail["errors"][0] if detail["errors"] else None
    lines = render_raw(
        staged["raw"], masked=masked, field=first["field"] if first else "", value=None
    )
    # Set by "Re-process selected" (post/redirect/get); counts only, no patient data.
    message = request.session.pop("flash", None)
    error = request.session.pop("flash_error", None)
    return render(
        request,
        "record.html",
        {"section": "causes", **detail, "lines": lines, "masked": masked, "message": message, "error": error},
    )


async def reprocess_selected(request: Request) -> Response:
    """Re-process the ticked staged records, then back to the page the form was on."""
    user = require(request, "reviewer")
    form = await csrf.checked_form(request)
    back = back_to(form.get("back"))
    if not form.getlist("staging_id"):
        request.session["flash_error"] = "Select at least one record to re-process."
        return RedirectResponse(back, status_code=303)
    try:
        ids = parse_ids(form.getlist("staging_id"))
        result = await run_in_threadpool(reprocess_records, registry(request), user, ids)
    except ActionError as exc:
        # Only a forged or stale form gets here (the page offers existing ids, one page at a time).
        raise HTTPException(400, str(exc)) from None
    request.session["flash"] = summary(result)
    # Without a page of ours to go back to, the first record's page shows the summary.
    return RedirectResponse(back_to(form.get("back"), f"/records/{ids[0]}"), status_code=303)


ROUTES = [
    Route("/records/reprocess", reprocess_selected, methods=["POST"]),
    Route("/records/{staging_id}", record, methods=["GET"]),
]
