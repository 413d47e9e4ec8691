"""The review web UI as a Starlette application: ``create_app(app)`` for the CLI and the daemon."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry_adapter.app import App
from registry_store.timeutil import utcnow
from review.access_log import AccessLog
from review.login_limits import ClientFailures, HashPool
from review.pages import (
    audit_log,
    cases,
    errors,
    feeds,
    measures,
    ops,
    records,
    reminder_link,
    reminders,
    session,
    start,
    users,
)
from review.pages.ops import metrics_registry
from review.settings import ReviewSettings
from review.web import HERE, make_templates, render

SESSION_COOKIE = "registry_review"
# How uvicorn serves the UI (``serve`` and the daemon's service): AccessLog writes the access
# log without query strings, and log_config=None leaves uvicorn's loggers to
# registry_adapter.logs (JSON through structlog) instead of its own plain-text handlers.
UVICORN_OPTIONS: dict[str, Any] = {"proxy_headers": True, "access_log": False, "log_config": None}
_SECURITY_HEADERS = [
    # No script, style or image from anywhere but this server; no framing (clickjacking).
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
     b"form-action 'self'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]  # fmt: skip


class SecurityHeaders:
    """Adds the headers above, and ``no-store`` on pages (they may show patient data)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(_SECURITY_HEADERS)
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 401:
        return RedirectResponse("/login", status_code=303)
    titles = {400: "Bad request", 403: "Not allowed", 404: "Not found", 405: "Not allowed"}
    title = titles.get(exc.status_code, "Something went wrong")
    return render(
        request,
        "error.html",
        {"title": title, "detail": exc.detail, "status": exc.status_code},
        exc.status_code,
    )


def create_app(app: App, host: str | None = None) -> Starlette:
    """The review UI for one registry store; serve it with uvicorn (``registry-adapter serve``).

    ``host`` is the address uvicorn listens on (default ``review.host``): with
    ``secure_cookies: auto`` it decides whether session cookies are marked Secure.
    """
    settings = app.settings.section(ReviewSettings)
    routes = [
        *start.ROUTES,
        *session.ROUTES,
        *errors.ROUTES,
        *records.ROUTES,
        *cases.ROUTES,
        *reminders.ROUTES,
        *feeds.ROUTES,
        *audit_log.ROUTES,
        *users.ROUTES,
        *ops.ROUTES,
        *measures.ROUTES,
        *reminder_link.ROUTES,
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(AccessLog),
        Middleware(SecurityHeaders),
        Middleware(
            SessionMiddleware,
            secret_key=settings.secret(),
            session_cookie=SESSION_COOKIE,
            max_age=settings.session_max_age,
            same_site="lax",
            https_only=settings.cookies_secure(host),
        ),
    ]
    web = Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: http_error})
    web.state.registry = app
    web.state.templates = make_templates(app)
    web.state.metrics = metrics_registry(app)
    web.state.hash_pool = HashPool()
    # The cause page offers re-processing after a restart (the configuration may have changed).
    web.state.started_at = utcnow()
    web.state.login_failures = ClientFailures(
        settings.login_max_failures_per_client, settings.login_client_window_hours * 3600
    )
    return web
