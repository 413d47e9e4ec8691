"""The audit log, for administrators: filterable by user, action and date, each entry's
before and after shown as readable changes rather than raw JSON."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from review.queries import AuditFilter, audit_facets, audit_page
from review.settings import ReviewSettings
from review.this_month import local_midnight_utc
from review.web import choice, date_arg, page_arg, registry, render, require


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def _shown(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(", ", ": "), default=str)
    return str(value)


def readable_changes(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[dict[str, str]]:
    """One line per field: "field: before → after" (fields only before or only after included)."""
    old, new = _flatten(before or {}), _flatten(after or {})
    lines = []
    for key in [*old, *(k for k in new if k not in old)]:
        if key in old and key in new and old[key] == new[key]:
            continue
        if old.get(key) is None and key not in new:
            continue  # an empty value that became a group of fields (decision → decision.status)
        lines.append(
            {
                "field": key.replace("_", " "),
                "before": _shown(old.get(key)) if key in old else "",
                "after": _shown(new.get(key)) if key in new else "",
            }
        )
    return lines


async def audit_list(request: Request) -> Response:
    require(request, "admin")
    app = registry(request)
    tz = app.settings.site.tz
    since_day, until_day = date_arg(request, "since"), date_arg(request, "until")
    with app.engine.connect() as conn:
        facets = audit_facets(conn)
        flt = AuditFilter(
            username=choice(request, "user", facets["username"]),
            action=choice(request, "action", facets["action"]),
            # Whole site-local days, "until" included.
            since=local_midnight_utc(since_day, tz) if since_day else None,
            until=local_midnight_utc(until_day + timedelta(days=1), tz) if until_day else None,
        )
        page = audit_page(conn, page_arg(request), app.settings.section(ReviewSettings).page_size, flt)
    rows = [{**a, "changes": readable_changes(a.get("before"), a.get("after"))} for a in page.rows]
    return render(
        request,
        "audit.html",
        {
            "section": "audit",
            "page": page,
            "rows": rows,
            "facets": facets,
            "flt": flt,
            "since": since_day,
            "until": until_day,
        },
    )


ROUTES = [Route("/audit", audit_list, methods=["GET"])]
