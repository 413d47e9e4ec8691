"""The start page's figures ("this month at a glance"), as one plain dict that the page shows
and ``registry-adapter month --json`` prints, so the two always agree.

- causes: new and growing since the start of yesterday (site-local): a cause is new when its
  first error appeared since then, growing when it had errors before and got more since;
- feeds: each source's latest run (received, mapped, failed, seconds, outcome);
- reminders: sends created this month: sent, failed, retrying (bounces are not reported back
  by any channel yet: ``bounced`` is null);
- submission: the last package in the ledger (``submissions``), or none;
- completeness: per time point, the PROM windows open today or closing in the period (this
  month or this quarter): completed, still open, missing.

Days and months are the site's (``site.timezone``); reads only.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, case, func, inspect, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.expression import ColumnElement

from registry_adapter.error_catalogue import info
from registry_store.tables import MAPPING_ERRORS as ERRORS
from registry_store.tables import REMINDER_SENDS as SENDS
from registry_store.tables import REMINDERS, SUBMISSION_ITEMS, SUBMISSIONS
from review.cause_help import VALUE_IS_A_CODE
from review.queries import latest_run_per_source

PERIODS = ("month", "quarter")
# Reminder statuses grouped as the start page counts them (cancelled ones are not counted).
OUTCOME_STATUSES = {
    "completed": ("completed",),
    "open": ("scheduled", "sent", "open"),
    "missing": ("expired", "missing"),
}
TIMEPOINT_ORDER = ("baseline", "90d", "1y")


def period_bounds(today: date, period: str) -> tuple[date, date]:
    """First and last day of the month or quarter holding ``today``."""
    first_month = today.month if period == "month" else 3 * ((today.month - 1) // 3) + 1
    start = date(today.year, first_month, 1)
    months = 1 if period == "month" else 3
    year, month = divmod(first_month - 1 + months, 12)
    end = date(today.year + year, month + 1, 1) - timedelta(days=1)
    return start, end


def local_midnight_utc(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tz).astimezone(UTC)


def in_period(start: date, end: date, today: date) -> ColumnElement[bool]:
    """Time points whose window is open today or closes within [start, end]."""
    return or_(
        REMINDERS.c.window_end.between(start, end),
        and_(REMINDERS.c.window_start <= today, REMINDERS.c.window_end >= today),
    )


def _causes(conn: Connection, since: datetime) -> dict[str, list[dict[str, Any]]]:
    recent = func.sum(case((ERRORS.c.first_seen >= since, 1), else_=0))
    rows = conn.execute(
        select(
            ERRORS.c.cause_id,
            func.min(ERRORS.c.code).label("code"),
            func.min(ERRORS.c.value).label("value"),
            func.min(ERRORS.c.first_seen).label("first_seen"),
            func.count().label("open"),
            recent.label("since"),
        )
        .where(ERRORS.c.status == "open")
        .group_by(ERRORS.c.cause_id)
        .having(recent > 0)
        .order_by(recent.desc(), ERRORS.c.cause_id)
    )
    new: list[dict[str, Any]] = []
    growing: list[dict[str, Any]] = []
    for r in rows:
        entry = info(r.code)
        item = {
            "cause_id": r.cause_id,
            "code": r.code,
            "title": entry.title if entry else r.code,
            # Only a code or a form URL: other values may be patient data.
            "value": r.value if str(r.code).startswith(VALUE_IS_A_CODE) else None,
            "open": int(r.open),
            "since_yesterday": int(r.since),
        }
        first = r.first_seen if r.first_seen.tzinfo else r.first_seen.replace(tzinfo=UTC)
        (new if first >= since else growing).append(item)
    return {"new": new, "growing": growing}


def _feeds(conn: Connection) -> list[dict[str, Any]]:
    out = []
    for run in latest_run_per_source(conn):
        counts = run.get("counts") or {}
        started, finished = run.get("started_at"), run.get("finished_at")
        seconds = round((finished - started).total_seconds(), 1) if started and finished else None
        out.append(
            {
                "source": run["source"],
                "outcome": run["outcome"],
                "started_at": started.isoformat() if started else None,
                "received": int(counts.get("received", 0) or 0),
                "mapped": int(counts.get("mapped", 0) or 0),
                "failed": int(counts.get("failed", 0) or 0),
                "seconds": seconds,
            }
        )
    return out


def _sends(conn: Connection, since: datetime) -> dict[str, int | None]:
    counts: dict[str, int] = dict(
        conn.execute(
            select(SENDS.c.status, func.count())
            .where(SENDS.c.created_at >= since, or_(SENDS.c.status != "pending", SENDS.c.error.is_not(None)))
            .group_by(SENDS.c.status)
        ).all()
    )
    return {
        "sent": int(counts.get("sent", 0)),
        "failed": int(counts.get("failed", 0)),
        "retrying": int(counts.get("pending", 0)),
        "bounced": None,  # no channel reports bounces back yet
    }


def _submission(conn: Connection) -> dict[str, Any]:
    if not inspect(conn).has_table(SUBMISSIONS.name):
        return {"status": "none"}
    last = conn.execute(select(SUBMISSIONS).order_by(SUBMISSIONS.c.id.desc()).limit(1)).first()
    if last is None:
        return {"status": "none"}
    cases = conn.execute(
        select(func.count()).where(SUBMISSION_ITEMS.c.submission_id == last.id)
    ).scalar_one()
    return {
        "status": "delivered",
        "period": last.period,
        "delivered_at": last.delivered_at.isoformat() if last.delivered_at else None,
        "package": last.package_name,
        "cases": int(cases),
    }


def _completeness(conn: Connection, start: date, end: date, today: date) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(REMINDERS.c.timepoint, REMINDERS.c.status, func.count())
        .where(in_period(start, end, today))
        .group_by(REMINDERS.c.timepoint, REMINDERS.c.status)
    ).all()
    per: dict[str, dict[str, int]] = {}
    for timepoint, status, n in rows:
        group = next((g for g, statuses in OUTCOME_STATUSES.items() if status in statuses), None)
        if group is None:
            continue  # cancelled: nobody is asked any more
        per.setdefault(timepoint, dict.fromkeys(OUTCOME_STATUSES, 0))[group] += int(n)
    order = {name: i for i, name in enumerate(TIMEPOINT_ORDER)}
    out = []
    for timepoint in sorted(per, key=lambda t: (order.get(t, len(order)), t)):
        counts = per[timepoint]
        total = sum(counts.values())
        percent = round(100 * counts["completed"] / total) if total else None
        out.append({"timepoint": timepoint, **counts, "total": total, "percent_completed": percent})
    return out


def this_month(conn: Connection, today: date, tz: ZoneInfo, period: str = "month") -> dict[str, Any]:
    """Everything the start page shows, as of ``today`` (a site-local date)."""
    start, end = period_bounds(today, period)
    since_yesterday = local_midnight_utc(today - timedelta(days=1), tz)
    month_start, _ = period_bounds(today, "month")
    return {
        "as_of": today.isoformat(),
        "timezone": str(tz),
        "period": period,
        "period_start": start.isoformat(),
        "period_end": end.isoformat(),
        "causes": _causes(conn, since_yesterday),
        "feeds": _feeds(conn),
        "reminders_this_month": _sends(conn, local_midnight_utc(month_start, tz)),
        "submission": _submission(conn),
        "completeness": _completeness(conn, start, end, today),
    }
