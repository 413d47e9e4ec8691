"""``registry-adapter reminders ...``, ``locks ...`` and ``run`` (plugged into the main CLI)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from sqlalchemy import ColumnElement, select

from registry_adapter.cli import Ctx, cases, pass_ctx, print_table, require_known
from registry_store import reminders as reminder_store
from registry_store.tables import CASES, REMINDERS
from scheduler.clock import Clock, FixedClock, SystemClock
from scheduler.planner import PlanningError, check_configuration, plan_reminders
from scheduler.queries import SCHEDULE_COLUMNS, due_now, rolled_back, unconfirmed_flag
from scheduler.settings import RemindersSettings

# The dispatcher (its channels: e-mail templates, SMS and HTTP clients) is imported by the
# commands that plan or send: listing the command line (``--help``) needs none of it.
if TYPE_CHECKING:
    from registry_adapter.app import App

out = Console(soft_wrap=True)

_as_of_option = click.option(
    "--as-of",
    "as_of",
    metavar="DATE",
    help="Act as if it were this site-local date (noon) or date-time, e.g. 2025-03-01.",
)


def _clock(app: App, as_of: str | None) -> Clock:
    if not as_of:
        return SystemClock()
    tz = app.settings.site.tz
    try:
        if len(as_of) == 10:
            return FixedClock(datetime.combine(date.fromisoformat(as_of), time(12), tz))
        at = datetime.fromisoformat(as_of)
    except ValueError:
        raise click.BadParameter(f"{as_of!r} is not an ISO date or date-time", param_hint="--as-of") from None
    return FixedClock(at if at.tzinfo else at.replace(tzinfo=tz))


def _checked_app(obj: Ctx) -> App:
    """The App, once the reminder settings fit the time points and instruments."""
    app = obj.app
    try:
        check_configuration(app.settings, [i.id for i in app.instruments])
    except PlanningError as exc:
        raise click.UsageError(str(exc)) from None
    return app


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date | datetime) else value


def reminder_rows(
    conn: Any,
    *,
    status: str | None = None,
    timepoint: str | None = None,
    where: Iterable[ColumnElement[bool]] = (),
) -> list[dict[str, Any]]:
    """One dict per planned time point, filtered by status, time point and ``where``."""
    query = (
        select(
            REMINDERS.c.id,
            REMINDERS.c.case_id,
            CASES.c.procedure_id,
            CASES.c.patient_id,
            CASES.c.module,
            *SCHEDULE_COLUMNS,
            REMINDERS.c.last_error,
            REMINDERS.c.cancel_reason,
            REMINDERS.c.completed_response_id,
            REMINDERS.c.anchor,
            REMINDERS.c.note,
            CASES.c.status_reason.label("case_status_reason"),
            unconfirmed_flag(),
        )
        .select_from(REMINDERS.join(CASES, CASES.c.id == REMINDERS.c.case_id))
        .order_by(REMINDERS.c.case_id, REMINDERS.c.due_date)
    )
    if status:
        query = query.where(REMINDERS.c.status == status)
    if timepoint:
        query = query.where(REMINDERS.c.timepoint == timepoint)
    query = query.where(*where)
    return [
        {**{k: _iso(v) for k, v in r._mapping.items()}, "unconfirmed": bool(r.unconfirmed)}
        for r in conn.execute(query)
    ]


@click.group()
def reminders() -> None:
    """PROM reminders: time points per case (90 days, 1 year), sending, worklist."""


@reminders.command("plan")
@_as_of_option
@click.option("--dry-run", is_flag=True, help="Count what planning would change; save nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_ctx
def plan_cmd(obj: Ctx, as_of: str | None, dry_run: bool, as_json: bool) -> None:
    """Plan (or re-plan) every case's time points; safe to run any time."""
    from scheduler.dispatcher import Dispatcher

    app = _checked_app(obj)
    counts = {**Dispatcher(app, _clock(app, as_of)).plan(dry_run=dry_run).as_dict(), "dry_run": dry_run}
    if as_json:
        _emit_json(counts)
        return
    statuses = ", ".join(f"{k} {v:,}" for k, v in counts["by_status"].items()) or "no cases"
    out.print(
        ("Would plan" if dry_run else "Planned")
        + f": {counts['created']:,} new, {counts['updated']:,} changed, "
        f"{counts['unchanged']:,} unchanged · {statuses}" + (" (dry run, nothing saved)" if dry_run else "")
    )


# Stored statuses (models.Reminder.status), and the baseline's planned ones (planner).
REMINDER_STATUSES = ("scheduled", "sent", "completed", "expired", "cancelled", "open", "missing")


@reminders.command("list")
@_as_of_option
@click.option("--status", type=click.Choice(REMINDER_STATUSES), help="Only reminders with this status.")
@click.option("--timepoint", help="Only this time point (one of proms.timepoints, e.g. 90d, 1y, baseline).")
@click.option(
    "--due", is_flag=True, help="Only time points whose next reminder is due (what send --due sends)."
)
@click.option("--json", "as_json", is_flag=True, help="One object per planned time point.")
@pass_ctx
def list_cmd(
    obj: Ctx, as_of: str | None, status: str | None, timepoint: str | None, due: bool, as_json: bool
) -> None:
    """Time points with due date, window, status and attempts (as planned now, nothing is saved)."""
    from scheduler.dispatcher import Dispatcher, no_send_in_flight

    app = _checked_app(obj)
    if timepoint is not None:
        require_known("--timepoint", [timepoint], app.settings.proms.timepoints)
    today = Dispatcher(app, _clock(app, as_of)).today()
    # Planned inside a transaction that is rolled back: the listing is current without a
    # read-only command writing anything.
    # --due: what ``send --due`` would send today, before quiet hours and the daily cap (a
    # time point whose failed send awaits its retry gets no new attempt).
    max_attempts = app.settings.section(RemindersSettings).max_attempts
    due_filter = [*due_now(today, max_attempts), no_send_in_flight()] if due else []
    with rolled_back(app.engine) as conn:
        plan_reminders(conn, app.settings, today)
        rows = reminder_rows(conn, status=status, timepoint=timepoint, where=due_filter)
    if as_json:
        _emit_json(rows)
        return
    table = []
    for r in rows:
        note = (
            (r["unconfirmed"] and "an attempt is unconfirmed (process crashed while sending): check")
            or r["last_error"]
            or (
                r["cancel_reason"] and " — ".join(filter(None, (r["cancel_reason"], r["case_status_reason"])))
            )
            or r["note"]
            or (r["completed_response_id"] and f"response {r['completed_response_id']}")
            or ""
        )
        table.append(
            (
                r["procedure_id"],
                r["timepoint"],
                r["anchor"] or "",
                r["due_date"],
                f"{r['window_start']} – {r['window_end']}",
                r["status"],
                r["attempts"],
                r["next_attempt_on"],
                note,
            )
        )
    columns = ("procedure", "timepoint", "anchor", "due", "window", "status", "attempts", "next", "note")
    print_table(columns, table)


@reminders.command("send")
@click.option("--due", is_flag=True, help="Send every reminder that is due now.")
@click.option("--case", "case_id", help="Send this case's next reminders now, even before their date.")
@click.option("--dry-run", is_flag=True, help="Show what would be sent; send and save nothing.")
@_as_of_option
@click.option("--json", "as_json", is_flag=True, help="Print what was (or would be) sent as JSON.")
@pass_ctx
def send_cmd(
    obj: Ctx, due: bool, case_id: str | None, dry_run: bool, as_of: str | None, as_json: bool
) -> None:
    """Send due reminders (what the daemon does every hour)."""
    from scheduler.dispatcher import Dispatcher

    if not due and not case_id:
        raise click.UsageError("pass --due (everything due now) or --case CASE_ID")
    app = _checked_app(obj)
    if not app.settings.section(RemindersSettings).enabled and not dry_run:
        raise click.UsageError("reminders are disabled (set reminders.enabled: true in the config)")
    report = Dispatcher(app, _clock(app, as_of)).run(dry_run=dry_run, case_id=case_id)
    if as_json:
        _emit_json(report.as_dict())
        return
    if report.locked:
        out.print("another dispatcher is running (lock held); nothing sent")
        return
    if report.lock_lost:
        out.print("[red]the dispatch lock was taken over by another process; stopped sending[/red]")
    verb = "would send" if dry_run else "sent"
    count = len(report.items) if dry_run else report.sent
    out.print(
        f"{verb} {count:,} reminders as of {report.as_of}"
        + (" — quiet hours, nothing sent" if report.quiet_hours and not dry_run else "")
        + (f"; {report.capped:,} held back by the daily cap" if report.capped else "")
        + (f"; {report.held_today:,} already reminded today" if report.held_today else "")
        + (f"; {report.retrying:,} failed and will be retried" if report.retrying else "")
        + (f"; {report.failed:,} failed for good (see reminders list)" if report.failed else "")
        + (f"; {report.unreachable:,} unreachable (on the worklist)" if report.unreachable else "")
        + (f"; {report.settled:,} interrupted sends settled" if report.settled else "")
    )
    for item in report.items:
        channels = ", ".join(item["channels"]) or "nobody reachable"
        out.print(f"  {item['procedure_id']} {item['timepoint']} attempt {item['attempt']} → {channels}")


@reminders.command("worklist")
@click.option(
    "--csv",
    "csv_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the coordinator worklist here (contains contact details: patient data).",
)
@pass_ctx
def worklist_cmd(obj: Ctx, csv_path: Path) -> None:
    """Export open time points for coordinators to call (worklist channel or undeliverable)."""
    from scheduler.channels.worklist import calls_due_on, export_csv
    from scheduler.dispatcher import Dispatcher

    app = obj.app
    due_on = calls_due_on(app.settings.section(RemindersSettings).enabled, Dispatcher(app).today())
    with app.engine.connect() as conn:
        n = export_csv(conn, csv_path, due_on)
    out.print(f"wrote {n:,} worklist rows to {csv_path}")


@reminders.command("opt-out")
@click.argument("patient_id")
@click.option("--source", "source_name", help="Only the patient of this source (default: every source).")
@click.option("--undo", is_flag=True, help="Take the opt-out back.")
@pass_ctx
def opt_out_cmd(obj: Ctx, patient_id: str, source_name: str | None, undo: bool) -> None:
    """Stop (or, with --undo, allow again) PROM reminders for a patient."""
    from scheduler.dispatcher import Dispatcher

    app = obj.app
    with app.engine.begin() as conn:
        n = reminder_store.set_opted_out(conn, patient_id, source=source_name, opted_out=not undo)
    if not n:
        raise click.UsageError(f"no patient with id {patient_id}")
    counts = Dispatcher(app).plan()
    out.print(
        f"patient {patient_id}: reminders {'allowed again' if undo else 'stopped'} "
        f"({counts.updated} time points re-planned)"
    )


@click.group()
def locks() -> None:
    """Job and sync leases: who holds which (host, pid, heartbeat); release a stuck one."""


@locks.command("list")
@click.option("--json", "as_json", is_flag=True, help="One object per lease.")
@pass_ctx
def locks_list_cmd(obj: Ctx, as_json: bool) -> None:
    """Leases held now, with their holder and whether it is alive, dead or stale."""
    from registry_store.leases import holders

    now = SystemClock().now()
    rows = [h.as_dict(now) for h in holders(obj.app.engine)]
    if as_json:
        _emit_json(rows)
        return
    if not rows:
        out.print("no leases held")
        return
    print_table(
        ("lease", "host", "pid", "heartbeat", "expires", "state"),
        ((r["name"], r["host"], r["pid"], r["heartbeat_at"], r["expires_at"], r["state"]) for r in rows),
    )


@locks.command("release")
@click.argument("name")
@click.option("--force", is_flag=True, help="Release it even though its holder looks alive.")
@pass_ctx
def locks_release_cmd(obj: Ctx, name: str, force: bool) -> None:
    """Release lease NAME (e.g. nightly, sync:ehr). Dead or stale holders are taken over
    automatically; this is for the rare manual case."""
    from registry_store.leases import holders
    from scheduler.jobs import abandon

    found = holders(obj.app.engine, name)
    if not found:
        raise click.UsageError(f"no lease named {name!r} is held (see: registry-adapter locks list)")
    [holder] = found
    state = holder.gone(SystemClock().now())
    if state is None and not force:
        raise click.UsageError(
            f"lease {name} is held by a live process ({holder.describe()}); "
            "stop that process, or pass --force if you are sure it no longer works on it"
        )
    if not abandon(obj.app, holder):
        raise click.UsageError(f"lease {name} changed hands meanwhile; nothing released")
    out.print(f"released lease {name} ({holder.describe()}; holder {state or 'alive, forced'})")


@click.command("run")
@click.option("--no-services", is_flag=True, help="Only the scheduler; no MLLP listener or web UI.")
@pass_ctx
def run_command(obj: Ctx, no_services: bool) -> None:
    """Run the daemon: nightly sync, reminder planning and hourly dispatch (stop with SIGTERM)."""
    from scheduler.daemon import Daemon, discover_services

    app = _checked_app(obj)
    services = [] if no_services else discover_services(app)
    raise SystemExit(Daemon(app, services).run_forever())


# On the main CLI's ``cases`` group: withdrawing a case re-plans its reminders, which is this
# package's business.
@cases.command("withdraw")
@click.argument("case_id")
@click.option("--reason", required=True, help="Why the surgery is not a registry case (audited).")
@click.option("--by", "by", default=None, help="Who withdraws it (default: the operating-system user).")
@pass_ctx
def cases_withdraw(obj: Ctx, case_id: str, reason: str, by: str | None) -> None:
    """Withdraw a case by hand: it leaves the registry and its open reminders are cancelled."""
    import getpass

    from mappings.cases import withdraw_case
    from registry_store import audit
    from scheduler.dispatcher import Dispatcher

    who = by or getpass.getuser()
    with obj.app.engine.begin() as conn:
        try:
            before, after = withdraw_case(conn, case_id, by=who, reason=reason)
        except LookupError as exc:
            raise click.UsageError(str(exc)) from None
        target = f"case:{case_id}"
        audit.record(conn, username=who, action="case.withdraw", target=target, before=before, after=after)
    counts = Dispatcher(obj.app).plan()
    out.print(f"case {case_id} withdrawn ({counts.updated} time points re-planned)")


COMMANDS = [reminders, locks, run_command]
