"""``registry-adapter serve`` and ``registry-adapter users``: the review UI and its accounts."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from registry_adapter.cli import Ctx, _emit_json, out, pass_ctx
from review.auth import ROLES, UserError, add_user, list_users, set_password, set_user
from review.settings import ReviewSettings


@click.command()
@click.option("--host", default=None, help="Address to listen on [default: review.host, 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [default: review.port, 8080].")
@pass_ctx
def serve(obj: Ctx, host: str | None, port: int | None) -> None:
    """Run the review web UI (mapping errors, cases, reminders, feed health)."""
    import uvicorn

    from review.app import UVICORN_OPTIONS, create_app
    from scheduler.replan import replan

    app = obj.app
    settings = app.settings.section(ReviewSettings)
    # Reminders planned as of today before the first page is shown (the nightly job may be
    # hours away, or not running at all on a machine that only serves the UI).
    replan(app, "serve")
    web = create_app(app, host or settings.host)
    uvicorn.run(web, host=host or settings.host, port=port or settings.port, **UVICORN_OPTIONS)


def _read_password(from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.UsageError("no password given")
    return str(password)


@click.group()
def users() -> None:
    """Accounts of the review web UI."""


@users.command("add")
@click.argument("username")
@click.option(
    "--role", type=click.Choice(ROLES), default="viewer", show_default=True, help="What the user may do."
)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@pass_ctx
def users_add(obj: Ctx, username: str, role: str, password_stdin: bool) -> None:
    """Create a user; the password is asked for (or read from stdin), never an argument."""
    password = _read_password(password_stdin)
    try:
        add_user(obj.app.engine, username, password, role)
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    out.print(f"user {username} added with role {role}")


@users.command("passwd")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@pass_ctx
def users_passwd(obj: Ctx, username: str, password_stdin: bool) -> None:
    """Set a user's password."""
    try:
        set_password(obj.app.engine, username, _read_password(password_stdin))
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    out.print(f"password of {username} changed")


@users.command("set")
@click.argument("username")
@click.option("--role", type=click.Choice(ROLES), default=None, help="Change the user's role.")
@click.option("--disable/--enable", "disabled", default=None, help="Lock or unlock the account.")
@pass_ctx
def users_set(obj: Ctx, username: str, role: str | None, disabled: bool | None) -> None:
    """Change a user's role, or disable / enable the account."""
    if role is None and disabled is None:
        raise click.UsageError("give --role, --disable or --enable")
    try:
        set_user(obj.app.engine, username, role=role, disabled=disabled)
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    out.print(f"user {username} updated")


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="One object per user (no password hashes).")
@pass_ctx
def users_list(obj: Ctx, as_json: bool) -> None:
    """Accounts with role, state and last sign-in."""
    now = datetime.now(UTC)
    rows = [
        {**u, "locked": bool(u["locked_until"] and u["locked_until"] > now)}
        for u in list_users(obj.app.engine)
    ]
    if as_json:
        _emit_json([{k: v.isoformat() if isinstance(v, datetime) else v for k, v in u.items()} for u in rows])
        return
    for u in rows:
        state = "disabled" if u["disabled"] else "locked" if u["locked"] else "active"
        last = u["last_login_at"].isoformat(timespec="minutes") if u["last_login_at"] else "never"
        out.print(f"{u['username']:<24} {u['role']:<9} {state:<9} last login {last}", highlight=False)


@click.command()
@click.option(
    "--period", type=click.Choice(["month", "quarter"]), default="month", show_default=True,
    help="Completeness of the PROM windows open today or closing this month or quarter.",
)
@click.option("--json", "as_json", is_flag=True, help="The start page's figures as one JSON object.")
@pass_ctx
def month(obj: Ctx, period: str, as_json: bool) -> None:
    """This month at a glance: the review UI's start page, on the command line."""
    from review.this_month import this_month

    app = obj.app
    tz = app.settings.site.tz
    with app.engine.connect() as conn:
        figures = this_month(conn, datetime.now(tz).date(), tz, period)
    if as_json:
        _emit_json(figures)
        return
    out.print(
        f"As of {figures['as_of']} ({figures['timezone']}), {period} "
        f"{figures['period_start']} – {figures['period_end']}"
    )
    for row in figures["completeness"]:
        out.print(
            f"  {row['timepoint']:>8}: {row['completed']} completed, {row['open']} open, "
            f"{row['missing']} missing ({row['percent_completed']}% completed)"
        )
    sends = figures["reminders_this_month"]
    out.print(
        f"Reminders this month: {sends['sent']} sent, {sends['failed']} failed, {sends['retrying']} retrying"
    )
    causes = figures["causes"]
    out.print(f"Causes since yesterday: {len(causes['new'])} new, {len(causes['growing'])} growing")
    sub = figures["submission"]
    out.print("Submission: " + ("none yet" if sub["status"] == "none" else f"{sub['period']} delivered"))


COMMANDS = [serve, users, month]
