"""Signing in and out."""

from __future__ import annotations

from datetime import timedelta

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from registry_store import audit
from review import csrf
from review.auth import CurrentUser, authenticate, end_sessions
from review.login_limits import ClientFailures, HashPool
from review.settings import ReviewSettings
from review.web import registry, render, user_of


async def login_form(request: Request) -> Response:
    if user_of(request) is not None:
        return RedirectResponse("/", status_code=303)
    return render(request, "login.html", {"error": None, "username": ""})


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def login(request: Request) -> Response:
    form = await csrf.checked_form(request)
    username = str(form.get("username", ""))[:100]
    password = str(form.get("password", ""))[:1000]
    app = registry(request)
    settings = app.settings.section(ReviewSettings)
    limits: ClientFailures = request.app.state.login_failures
    address = _client_address(request)
    if limits.blocked(address):
        return render(
            request,
            "login.html",
            {"error": "Too many failed sign-ins from this address. Try again later.", "username": username},
            429,
        )

    def check() -> CurrentUser | None:
        with app.engine.begin() as conn:
            return authenticate(
                conn,
                username,
                password,
                max_failures=settings.login_max_failures,
                lockout=timedelta(minutes=settings.login_lockout_minutes),
            )

    # argon2 off the event loop, in a small pool: a sign-in flood queues there while other
    # pages and /healthz keep answering.
    pool: HashPool = request.app.state.hash_pool
    user = await pool.run(check)
    if user is None:
        limits.record_failure(address)
        # Who tried (the name as typed, never the password) is on record for the admins.
        await run_in_threadpool(
            audit.record_alone,
            app.engine,
            username=username or "(empty)",
            action="session.sign_in_failed",
            target=f"user:{username}",
        )
        # One message for unknown user, wrong password, disabled and locked account alike.
        return render(
            request, "login.html", {"error": "Wrong username or password.", "username": username}, 400
        )
    # A fresh session on sign-in: a session id planted before login is worth nothing after.
    request.session.clear()
    request.session["uid"] = user.id
    request.session["sv"] = user.session_version
    csrf.rotate(request)
    await run_in_threadpool(
        audit.record_alone,
        app.engine,
        username=user.username,
        action="session.sign_in",
        target=f"user:{user.username}",
    )
    return RedirectResponse("/", status_code=303)


async def logout(request: Request) -> Response:
    await csrf.checked_form(request)
    user = user_of(request)
    if user is not None:
        # Sign-out ends the session server-side too: a copy of the cookie is worthless after.
        with registry(request).engine.begin() as conn:
            end_sessions(conn, user.id)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


ROUTES = [
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
