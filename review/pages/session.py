"""Signing in and out."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from review import csrf
from review.auth import authenticate
from review.web import registry, render, user_of


async def login_form(request: Request) -> Response:
    if user_of(request) is not None:
        return RedirectResponse("/", status_code=303)
    return render(request, "login.html", {"error": None, "username": ""})


async def login(request: Request) -> Response:
    form = await csrf.checked_form(request)
    username = str(form.get("username", ""))[:100]
    password = str(form.get("password", ""))[:1000]
    with registry(request).engine.begin() as conn:
        user = authenticate(conn, username, password)
    if user is None:
        # One message for unknown user, wrong password and disabled account alike.
        return render(
            request, "login.html", {"error": "Wrong username or password.", "username": username}, 400
        )
    # A fresh session on sign-in: a session id planted before login is worth nothing after.
    request.session.clear()
    request.session["uid"] = user.id
    csrf.rotate(request)
    return RedirectResponse("/", status_code=303)


async def logout(request: Request) -> Response:
    await csrf.checked_form(request)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


ROUTES = [
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
