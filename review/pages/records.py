"""A staged record drilled down (review.record_view)."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from review.raw_view import render_raw
from review.record_view import record_detail
from review.web import masked_for, registry, render, require


async def record(request: Request) -> Response:
    user = require(request)
    raw_id = str(request.path_params["staging_id"])
    if not raw_id.isdigit() or len(raw_id) > 12:
        raise HTTPException(404)
    masked = masked_for(request, user)
    with registry(request).engine.connect() as conn:
        detail = record_detail(conn, int(raw_id), masked)
    if detail is None:
        raise HTTPException(404)
    staged = detail["staged"]
    first = detail["errors"][0] if detail["errors"] else None
    lines = render_raw(
        staged["raw"], masked=masked, field=first["field"] if first else "", value=None
    )
    return render(
        request, "record.html", {"section": "causes", **detail, "lines": lines, "masked": masked}
    )


ROUTES = [Route("/records/{staging_id}", record, methods=["GET"])]
