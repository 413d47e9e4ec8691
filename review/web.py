"""What every page shares: templates, the signed-in user, paging arguments, formatting."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from registry_adapter.app import App
from review import csrf
from review.auth import CurrentUser, load_user
from review.queries import as_utc
from review.settings import ReviewSettings

HERE = Path(__file__).resolve().parent

NAV = (
    ("start", "/", "This month"),
    ("causes", "/causes", "Errors by cause"),
    ("cases", "/cases", "Cases"),
    ("reminders", "/reminders", "Reminders"),
    ("feeds", "/feeds", "Feed health"),
    ("measures", "/measures", "Measures"),
)


def registry(request: Request) -> App:
    app: App = request.app.state.registry
    return app


def user_of(request: Request) -> CurrentUser | None:
    """The signed-in user, read from the store once per request."""
    try:
        cached: CurrentUser | None = request.state.user
        return cached
    except AttributeError:
        pass
    uid = request.session.get("uid")
    user = None
    if uid is not None:
        with registry(request).engine.connect() as conn:
            user = load_user(conn, uid, request.session.get("sv", 0))
        if user is None:
            request.session.clear()  # account gone or disabled, or signed out elsewhere
    request.state.user = user
    return user


def require(request: Request, role: str = "viewer") -> CurrentUser:
    """The signed-in user with at least ``role``; 401 sends the browser to the login page."""
    user = user_of(request)
    if user is None:
        raise HTTPException(401)
    if not user.can(role):
        raise HTTPException(403, f"This needs the {role} role.")
    return user


def masked_for(request: Request, user: CurrentUser) -> bool:
    return user.role in registry(request).settings.section(ReviewSettings).mask_phi_for


# Larger page numbers overflow the SQL OFFSET (SQLite: OverflowError, a 500); no list here
# comes near a million pages even at the smallest page size.
MAX_PAGE = 1_000_000


def page_arg(request: Request) -> int:
    """``?page=``: 1 when absent; anything but a whole number from 1 to MAX_PAGE is a 400."""
    raw = request.query_params.get("page", "1").strip()
    # Digits only and short: int() of a huge digit string is itself slow (and capped by Python).
    digits = raw.isascii() and raw.isdigit()
    if not digits or len(raw) > len(str(MAX_PAGE)) or not 1 <= int(raw) <= MAX_PAGE:
        raise HTTPException(400, f"page must be a whole number from 1 to {MAX_PAGE:,}.")
    return int(raw)


def choice(request: Request, name: str, allowed: tuple[str, ...] | list[str], default: str = "") -> str:
    value = request.query_params.get(name, default)
    return value if value in allowed else default


def date_arg(request: Request, name: str) -> date | None:
    """``?name=YYYY-MM-DD`` (the lists' date filters); anything else is a 400 naming the field."""
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise HTTPException(400, f"{name.replace('_', ' ')} must be a date (YYYY-MM-DD).") from None


def text_arg(request: Request, name: str, limit: int = 100) -> str:
    return request.query_params.get(name, "").strip()[:limit]


def id_param(request: Request, name: str) -> int:
    """A numeric row id from the URL path; anything else (or too long for a row id) is a 404."""
    raw = str(request.path_params[name])
    if not raw.isdigit() or len(raw) > 12:
        raise HTTPException(404)
    return int(raw)


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
    app = registry(request)
    ctx = {
        "user": user_of(request),
        "csrf_token": csrf.token(request),
        "nav": NAV,
        "site_id": app.settings.site.id,
        **context,
    }
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(request, name, ctx, status_code=status_code)


def _site_tz(app: App) -> ZoneInfo:
    return app.settings.site.tz


def make_templates(app: App) -> Jinja2Templates:
    """Templates with filters in the site's time zone (one set per web app)."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    tz = _site_tz(app)

    def when(value: Any) -> str:
        if value is None or value == "":
            return ""
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                return value
        if isinstance(value, datetime):
            local = as_utc(value)
            assert local is not None
            return local.astimezone(tz).strftime("%Y-%m-%d %H:%M")
        if isinstance(value, date):
            return value.isoformat()
        return str(value)

    def num(value: Any) -> str:
        return f"{value:,}" if isinstance(value, int) else str(value or 0)

    templates.env.filters["when"] = when
    templates.env.filters["num"] = num
    templates.env.globals["query_with"] = query_with
    return templates


def query_with(request: Request, **changes: Any) -> str:
    """The current query string with some arguments changed (pager links keep the filters)."""
    params = dict(request.query_params)
    for key, value in changes.items():
        if value in (None, ""):
            params.pop(key, None)
        else:
            params[key] = str(value)
    return "?" + urlencode(params) if params else "?"
