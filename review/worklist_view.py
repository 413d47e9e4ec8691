"""What the worklist and a reminder's page read: delivery state, why to call, channel outages,
and a reminder's history (attempts, clicks, coordinator actions).

Reads only; every write of the worklist is in ``registry_store.worklist``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.engine import Connection

from registry_store.tables import CASES, PATIENTS, REMINDERS
from registry_store.tables import REMINDER_CLICKS as CLICKS
from registry_store.tables import REMINDER_SENDS as SENDS
from registry_store.worklist import ITEMS, actions_of
from scheduler.queries import with_case_and_patient

# Plain words for the channels and call outcomes, as coordinators say them.
CHANNEL_NAMES = {"email": "E-mail", "webhook": "Text messages (SMS gateway)", "fhir": "Hospital FHIR server"}
OUTCOME_NAMES = {
    "reached": "Reached",
    "left_message": "Left a message",
    "wrong_number": "Wrong number",
    "declined": "Declined",
}
# Reason filters of the worklist (?reason=): key → words.
REASONS = {
    "failed": "Reminder could not be delivered",
    "unconfirmed": "Reminder may not have arrived",
    "call": "Call the patient",
    "call_back": "Call back today",
}
# A channel is reported down when this many reminders failed on it with no success since.
OUTAGE_MIN_REMINDERS = 2


def latest_sends(conn: Connection, reminder_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Each reminder's most recent send (its last attempt on any channel)."""
    ids = list(reminder_ids)
    if not ids:
        return {}
    newest = (
        select(SENDS.c.reminder_id, func.max(SENDS.c.id).label("id"))
        .where(SENDS.c.reminder_id.in_(ids))
        .group_by(SENDS.c.reminder_id)
        .subquery()
    )
    rows = conn.execute(select(SENDS).join(newest, newest.c.id == SENDS.c.id))
    return {r.reminder_id: dict(r._mapping) for r in rows}


def delivery_status(row: dict[str, Any], latest: dict[str, Any] | None) -> str:
    """The status a coordinator sees: a send that failed shows as failed, not as scheduled."""
    status = str(row.get("status") or "")
    if status not in ("scheduled", "sent") or latest is None:
        return status
    if latest["status"] == "failed":
        return "failed"
    if latest["status"] == "pending" and latest.get("error"):
        return "retrying"
    return status


def reason_to_call(row: dict[str, Any], latest: dict[str, Any] | None, today: date) -> tuple[str, str]:
    """(reason key, words): why this time point is on the worklist, the most pressing first."""
    call_back = row.get("call_back_on")
    if call_back is not None and call_back <= today:
        return "call_back", f"Call back (planned for {call_back.isoformat()})"
    if row.get("last_error") or (latest and latest["status"] == "failed"):
        channel = CHANNEL_NAMES.get(str(latest["channel"]), str(latest["channel"])) if latest else "Reminder"
        if str(row.get("last_error") or "").startswith("unreachable"):
            return "failed", "No e-mail or phone on file to send a reminder to"
        return "failed", f"{channel} reminder could not be delivered"
    if row.get("unconfirmed"):
        return "unconfirmed", "Reminder may not have arrived (sent during a restart)"
    return "call", "Due: call the patient"


def days_left(row: dict[str, Any], today: date) -> int | None:
    end = row.get("window_end")
    return (end - today).days if isinstance(end, date) else None


def tel_href(phone: str | None) -> str | None:
    """A ``tel:`` link for a phone number as stored (digits and a leading + kept)."""
    if not phone:
        return None
    digits = "".join(c for c in phone if c.isdigit() or c == "+")
    return f"tel:{digits}" if sum(c.isdigit() for c in digits) >= 3 else None


@dataclass(frozen=True)
class Outage:
    channel: str
    name: str
    reminders: int
    since: datetime
    last_error: str


def channel_outages(conn: Connection, now: datetime, lookback_days: int = 14) -> list[Outage]:
    """Channels whose recent sends all failed: one banner each instead of one row per patient.

    A channel counts as down when, since its last successful send (within ``lookback_days``),
    at least OUTAGE_MIN_REMINDERS reminders had a send fail or wait for a retry with an error.
    """
    since_floor = now - timedelta(days=lookback_days)
    out: list[Outage] = []
    channels = conn.execute(
        select(SENDS.c.channel).where(SENDS.c.created_at >= since_floor).distinct()
    ).scalars()
    for channel in sorted(channels):
        last_ok = conn.execute(
            select(func.max(SENDS.c.sent_at)).where(SENDS.c.channel == channel, SENDS.c.status == "sent")
        ).scalar_one()
        after = [SENDS.c.channel == channel, SENDS.c.error.is_not(None), SENDS.c.created_at >= since_floor]
        if last_ok is not None:
            after.append(SENDS.c.created_at > last_ok)
        failing = conn.execute(
            select(
                func.count(func.distinct(SENDS.c.reminder_id)),
                func.min(SENDS.c.created_at),
                func.max(SENDS.c.id),
            ).where(and_(*after), SENDS.c.status.in_(["failed", "pending"]))
        ).one()
        count, first, newest_id = failing
        if count and count >= OUTAGE_MIN_REMINDERS:
            error = conn.execute(select(SENDS.c.error).where(SENDS.c.id == newest_id)).scalar_one()
            out.append(
                Outage(
                    channel, CHANNEL_NAMES.get(channel, channel), int(count), first, str(error or "")[:300]
                )
            )
    return out


def reminder_history(conn: Connection, reminder_id: int) -> dict[str, Any] | None:
    """One reminder with its case and patient, every attempt, link click and coordinator action."""
    row = conn.execute(
        select(
            REMINDERS,
            CASES.c.procedure_id,
            CASES.c.patient_id,
            CASES.c.source,
            CASES.c.module,
            CASES.c.category,
            CASES.c.surgery_date,
            PATIENTS.c.mrn,
            PATIENTS.c.phone,
            PATIENTS.c.email,
            PATIENTS.c.opted_out,
            ITEMS.c.assigned_to,
            ITEMS.c.call_back_on,
            ITEMS.c.last_outcome,
            ITEMS.c.completed_how,
            ITEMS.c.completed_on,
        )
        .select_from(
            with_case_and_patient(keep_orphans=True).outerjoin(ITEMS, ITEMS.c.reminder_id == REMINDERS.c.id)
        )
        .where(REMINDERS.c.id == reminder_id)
    ).first()
    if row is None:
        return None
    sends = [
        dict(r._mapping)
        for r in conn.execute(
            select(SENDS).where(SENDS.c.reminder_id == reminder_id).order_by(SENDS.c.attempt, SENDS.c.id)
        )
    ]
    clicks = [
        dict(r._mapping)
        for r in conn.execute(
            select(CLICKS).where(CLICKS.c.reminder_id == reminder_id).order_by(CLICKS.c.clicked_at)
        )
    ]
    return {
        "reminder": dict(row._mapping),
        "sends": sends,
        "clicks": clicks,
        "actions": actions_of(conn, reminder_id),
    }


def sends_of(conn: Connection, reminder_ids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
    """Every attempt of each reminder, in order (the case page's reminder history)."""
    ids = list(reminder_ids)
    out: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    if not ids:
        return out
    for r in conn.execute(
        select(SENDS).where(SENDS.c.reminder_id.in_(ids)).order_by(SENDS.c.attempt, SENDS.c.id)
    ):
        out[r.reminder_id].append(dict(r._mapping))
    return out
