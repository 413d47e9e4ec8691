"""Writes to PROM reminders, their sends and link clicks.

The scheduler decides what to plan and send (``scheduler.planner``, ``scheduler.dispatcher``);
these functions store its decisions, each in the caller's transaction. Claims are optimistic:
a reminder row is changed only if its ``attempts`` is still what the caller read, so two
dispatchers (or a planner and a dispatcher) never both act on one attempt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, update
from sqlalchemy.engine import Connection

from registry_store.db import upsert
from registry_store.tables import PATIENTS, REMINDER_CLICKS, REMINDER_SENDS, REMINDERS
from registry_store.timeutil import utcnow


def insert_new_reminders(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Plan new time points. DO NOTHING on conflict: a concurrent planner (another process)
    may have inserted the same (case, time point) first. One bulk write (``db.upsert``'s
    cached plan), not a statement compiled per batch."""
    upsert(conn, REMINDERS, rows, keys=["case_id", "timepoint"], update=[])


def claim_reminder(conn: Connection, reminder_id: int, seen_attempts: int, values: Mapping[str, Any]) -> bool:
    """Change a reminder if nobody did since the caller read it with ``seen_attempts``
    attempts; False when another planner or dispatcher got there first."""
    result = conn.execute(
        update(REMINDERS)
        .where(and_(REMINDERS.c.id == reminder_id, REMINDERS.c.attempts == seen_attempts))
        .values(**values)
    )
    return result.rowcount == 1


def record_send(
    conn: Connection,
    *,
    reminder_id: int,
    attempt: int,
    channel: str,
    idempotency_key: str,
    created_at: datetime,
) -> int:
    """A send about to go out (``pending``, first try); returns its id."""
    return int(
        conn.execute(
            REMINDER_SENDS.insert()
            .values(
                reminder_id=reminder_id,
                attempt=attempt,
                channel=channel,
                idempotency_key=idempotency_key,
                status="pending",
                tries=1,
                created_at=created_at,
            )
            .returning(REMINDER_SENDS.c.id)
        ).scalar_one()
    )


def record_sent(
    conn: Connection, send_id: int, reminder_id: int, at: datetime, provider_id: str | None
) -> None:
    """The channel took the message: the send is ``sent`` and a scheduled reminder too."""
    conn.execute(
        update(REMINDER_SENDS)
        .where(REMINDER_SENDS.c.id == send_id)
        .values(status="sent", sent_at=at, provider_id=provider_id, error=None)
    )
    conn.execute(
        update(REMINDERS)
        .where(REMINDERS.c.id == reminder_id)
        .values(last_sent_at=at, last_error=None, updated_at=at)
    )
    conn.execute(
        update(REMINDERS)
        .where(REMINDERS.c.id == reminder_id, REMINDERS.c.status == "scheduled")
        .values(status="sent")
    )


def record_send_failure(
    conn: Connection, send_id: int, reminder_id: int, at: datetime, error: str, *, channel: str, give_up: bool
) -> None:
    """A try failed: the send stays ``pending`` for a retry, or is ``failed`` when the
    caller gives up, and then the reminder shows the error on the worklist."""
    conn.execute(
        update(REMINDER_SENDS)
        .where(REMINDER_SENDS.c.id == send_id)
        .values(status="failed" if give_up else "pending", error=error)
    )
    if give_up:
        conn.execute(
            update(REMINDERS)
            .where(REMINDERS.c.id == reminder_id)
            .values(last_error=f"{channel}: {error}"[:2000], updated_at=at)
        )


def cancel_send(conn: Connection, send_id: int, why: str) -> None:
    """A pending send that will not be tried again (superseded, channel gone, time point closed)."""
    conn.execute(
        update(REMINDER_SENDS)
        .where(REMINDER_SENDS.c.id == send_id)
        .values(status="cancelled", error=f"not sent ({why}); an earlier try may have arrived")
    )


def count_send_try(conn: Connection, send_id: int, tries: int) -> None:
    """A pending send is about to be tried again: ``tries`` is the new count."""
    conn.execute(update(REMINDER_SENDS).where(REMINDER_SENDS.c.id == send_id).values(tries=tries))


def record_click(conn: Connection, reminder_id: int, attempt: int) -> None:
    """The patient opened the questionnaire link of a reminder's attempt."""
    conn.execute(
        REMINDER_CLICKS.insert().values(reminder_id=reminder_id, attempt=attempt, clicked_at=utcnow())
    )


def set_opted_out(conn: Connection, patient_id: str, *, source: str | None, opted_out: bool) -> int:
    """Stop (or allow again) reminders for a patient, in one source or all; returns the
    number of patient rows changed (0: no such patient)."""
    cond = [PATIENTS.c.id == patient_id]
    if source:
        cond.append(PATIENTS.c.source == source)
    return int(conn.execute(update(PATIENTS).where(and_(*cond)).values(opted_out=opted_out)).rowcount)
