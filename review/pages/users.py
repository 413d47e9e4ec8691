"""Accounts, for administrators: add a user, change a role, reset a password, disable or
enable; every change audited (never a password). The same functions as `registry-adapter users`."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from registry_store import audit
from review import csrf
from review.auth import ROLES, UserError, add_user, list_users, set_password, set_user
from review.web import registry, render, require


async def users_page(request: Request) -> Response:
    require(request, "admin")
    app = registry(request)
    rows = await run_in_threadpool(list_users, app.engine)
    return render(
        request,
        "users.html",
        {
            "section": "users",
            "rows": rows,
            "roles": ROLES,
            "message": request.session.pop("flash", None),
            "error": request.session.pop("flash_error", None),
        },
    )


def _change(app_engine: Engine, admin: str, action: str, username: str, form: dict[str, str]) -> str:
    """Do one account change; returns the words for the page. Raises UserError."""
    if action == "add":
        role = form.get("role", "viewer")
        add_user(app_engine, username, form.get("password", ""), role)
        after: dict[str, object] = {"role": role}
        words = f"User {username} added as {role}."
    elif action == "role":
        role = form.get("role", "")
        set_user(app_engine, username, role=role)
        after, words = {"role": role}, f"{username} is now {role}."
    elif action == "password":
        set_password(app_engine, username, form.get("password", ""))
        after, words = {"password": "reset"}, f"Password of {username} reset; their sessions have ended."
    elif action in ("disable", "enable"):
        if action == "disable" and username == admin:
            raise UserError("you cannot disable your own account")
        set_user(app_engine, username, disabled=action == "disable")
        after, words = {"disabled": action == "disable"}, f"{username} is {action}d."
    else:
        raise UserError(f"unknown action {action[:40]!r}")
    target = f"user:{username}"
    audit.record_alone(app_engine, username=admin, action=f"user.{action}", target=target, after=after)
    return words


async def users_change(request: Request) -> Response:
    admin = require(request, "admin")
    app = registry(request)
    form = await csrf.checked_form(request)
    fields = {k: str(v) for k, v in form.items() if k != "csrf_token"}
    username = fields.get("username", "").strip()[:100]
    try:
        action = fields.get("action", "")
        words = await run_in_threadpool(_change, app.engine, admin.username, action, username, fields)
    except UserError as exc:
        request.session["flash_error"] = str(exc)
    else:
        request.session["flash"] = words
    return RedirectResponse("/users", status_code=303)


ROUTES = [
    Route("/users", users_page, methods=["GET"]),
    Route("/users", users_change, methods=["POST"]),
]
