"""The Measures page: what the registry measures the site on, per quarter and module."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from registry_adapter.submission.measures import MODULES, measures_by_quarter
from review.measures_chart import charts
from review.web import registry, render, require


async def measures(request: Request) -> Response:
    require(request)
    by_quarter = measures_by_quarter(registry(request))
    return render(
        request,
        "measures.html",
        {
            "section": "measures",
            "quarters": by_quarter,
            "modules": MODULES,
            "charts": charts(by_quarter),
        },
    )


ROUTES = [Route("/measures", measures, methods=["GET"])]
