"""The audit log, for administrators."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from review.queries import audit_page
from review.settings import ReviewSettings
from review.web import page_arg, registry, render, require


async def audit_list(request: Request) -> Response:
    require(request, "admin")
    app = registry(request)
    with app.engine.connect() as conn:
        page = audit_page(conn, page_arg(request), app.settings.section(ReviewSettings).page_size)
    return render(request, "audit.html", {"section": "audit", "page": page})


ROUTES = [Route("/audit", audit_list, methods=["GET"])]
