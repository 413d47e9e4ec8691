"""Registry cases: the list and one case with its procedures, diagnoses, PROMs and reminders."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from registry_adapter.app import App
from review.queries import BASELINE_STATUSES, CaseFilter, case_detail, case_facets, cases_page
from review.settings import ReviewSettings
from review.web import choice, date_arg, masked_for, page_arg, registry, render, require, text_arg
from scheduler.settings import RemindersSettings


async def cases(request: Request) -> Response:
    require(request)
    app = registry(request)
    with app.engine.connect() as conn:
        facets = case_facets(conn)
        flt = CaseFilter(
            module=choice(request, "module", facets["module"]),
            category=choice(request, "category", facets["category"]),
            q=text_arg(request, "q"),
            include_removed=request.query_params.get("removed") == "1",
            baseline=choice(request, "baseline", BASELINE_STATUSES),
            tracked=_tracked_timepoints(app),
            surgery_from=date_arg(request, "surgery_from"),
            surgery_to=date_arg(request, "surgery_to"),
        )
        page = cases_page(conn, flt, page_arg(request), app.settings.section(ReviewSettings).page_size)
    return render(
        request,
        "cases.html",
        {
            "section": "cases",
            "page": page,
            "flt": flt,
            "facets": facets,
            "baseline_statuses": BASELINE_STATUSES,
        },
    )


def _tracked_timepoints(app: App) -> tuple[str, ...]:
    """Time points planned without reminders (the pre-operative baseline by default)."""
    remind = set(app.settings.section(RemindersSettings).remind)
    return tuple(tp for tp in app.settings.proms.timepoints if tp not in remind)


# What a reminder's due date counts from (reminders.anchor, set by the planner).
ANCHOR_LABELS = {
    "surgery": "surgery",
    "discharge": "discharge",
    "surgery_fallback": "surgery (no usable discharge date)",
}


async def case(request: Request) -> Response:
    user = require(request)
    with registry(request).engine.connect() as conn:
        detail = case_detail(conn, request.path_params["case_id"])
    if detail is None:
        raise HTTPException(404)
    context = {"section": "cases", **detail, "anchor_labels": ANCHOR_LABELS}
    return render(request, "case.html", {**context, "masked": masked_for(request, user)})


ROUTES = [
    Route("/cases", cases, methods=["GET"]),
    Route("/cases/{case_id:path}", case, methods=["GET"]),
]
