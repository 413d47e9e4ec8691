"""Registry cases: the list and one case with its procedures, diagnoses, PROMs and reminders."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from registry_adapter.app import App
from review.case_outcomes import submission_context
from review.queries import BASELINE_STATUSES, CaseFilter, case_detail, case_facets, cases_page
from review.settings import ReviewSettings
from review.web import choice, date_arg, masked_for, page_arg, registry, render, require, text_arg
from review.worklist_view import sends_of
from scheduler.settings import RemindersSettings


async def cases(request: Request) -> Response:
    user = require(request)
    app = registry(request)
    by_mrn = not masked_for(request, user)
    with app.engine.connect() as conn:
        facets = case_facets(conn)
        flt = CaseFilter(
            module=choice(request, "module", facets["module"]),
            category=choice(request, "category", facets["category"]),
            q=text_arg(request, "q"),
            include_removed=request.query_params.get("removed") == "1",
            baseline=choice(request, "baseline", BASELINE_STATUSES),
            tracked=_tracked_timepoints(app),
            patient=text_arg(request, "patient", 128),
            patient_by_mrn=by_mrn,
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
            "patient_label": "MRN or registry pseudonym" if by_mrn else "Registry pseudonym",
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


# The PROM trajectory chart: time points left to right, each instrument's first score.
TRAJECTORY_ORDER = ("baseline", "90d", "1y")
CHART_W, CHART_H, CHART_LEFT, CHART_TOP, CHART_BOTTOM = 480, 200, 40, 12, 28


def trajectories(proms: list[dict[str, Any]]) -> dict[str, Any]:
    """Per instrument, its main score at each time point (baseline → 90 days → 1 year), placed
    on a shared 0..top scale as SVG coordinates."""
    per: dict[str, dict[str, Any]] = {}
    for r in proms:
        scores = r.get("scores") or {}
        if r.get("timepoint") not in TRAJECTORY_ORDER or not scores:
            continue
        name, value = next(iter(scores.items()))
        if not isinstance(value, (int, float)):
            continue
        line = per.setdefault(r["instrument"], {"instrument": r["instrument"], "score": name, "values": {}})
        line["values"].setdefault(r["timepoint"], float(value))  # the first response of a time point
    top = max([100.0, *(v for line in per.values() for v in line["values"].values())])
    step = (CHART_W - CHART_LEFT - 20) / (len(TRAJECTORY_ORDER) - 1)
    plot_h = CHART_H - CHART_TOP - CHART_BOTTOM
    lines = []
    for n, line in enumerate(sorted(per.values(), key=lambda x: x["instrument"])):
        points = [
            {
                "timepoint": tp,
                "value": line["values"][tp],
                "x": round(CHART_LEFT + i * step, 1),
                "y": round(CHART_TOP + plot_h * (1 - line["values"][tp] / top), 1),
            }
            for i, tp in enumerate(TRAJECTORY_ORDER)
            if tp in line["values"]
        ]
        lines.append({**line, "points": points, "series": n % 4})
    axis = [
        {"timepoint": tp, "x": round(CHART_LEFT + i * step, 1)} for i, tp in enumerate(TRAJECTORY_ORDER)
    ]
    ticks = [{"value": round(top * f), "y": round(CHART_TOP + plot_h * (1 - f), 1)} for f in (0, 0.5, 1)]
    return {"lines": lines, "axis": axis, "ticks": ticks, "width": CHART_W, "height": CHART_H,
            "left": CHART_LEFT, "bottom": CHART_H - CHART_BOTTOM}  # fmt: skip


async def case(request: Request) -> Response:
    user = require(request)
    with registry(request).engine.connect() as conn:
        detail = case_detail(conn, request.path_params["case_id"])
        if detail is None:
            raise HTTPException(404)
        detail |= submission_context(conn, detail["case"]["id"])
        attempts = sends_of(conn, [r["id"] for r in detail["reminders"]])
    context = {
        "section": "cases",
        **detail,
        "anchor_labels": ANCHOR_LABELS,
        "attempts": attempts,
        "trajectory": trajectories(detail["proms"]),
    }
    return render(request, "case.html", {**context, "masked": masked_for(request, user)})


ROUTES = [
    Route("/cases", cases, methods=["GET"]),
    Route("/cases/{case_id:path}", case, methods=["GET"]),
]
