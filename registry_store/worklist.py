"""Writes of the coordinators' worklist: call outcomes, notes, assignments, call-back dates,
completion by phone or on paper, and opt-outs.

Each function writes, in one transaction, the action (``worklist_actions``), where the
reminder now stands (``worklist_items``) and an audit entry; the caller re-plans reminders
afterwards, so a completion or an opt-out stops the reminders at once. Notes are free text a
coordinator typed: they are stored, never logged, and the audit entry says only that a note
was written and how long it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Engine

from registry_store.db import upsert
from registry_store.tables import AUDIT_LOG as AUDIT
from registry_store.tables import CASES, PATIENTS, REMINDERS
from registry_store.tables import WORKLIST_ACTIONS as ACTIONS
from registry_store.tables import WORKLIST_ITEMS as ITEMS
from registry_store.timeutil import utcnow

CALL_OUTCOMES = ("reached", "left_message", "wrong_number", "declined")
COMPLETED_HOW = ("phone", "paper")
NOTE_LIMIT = 2000


class WorklistError(ValueError):
    """The action cannot be recorded as asked; the message names the reminder and the field
    (never patient data) and is safe to show."""


@dataclass(frozen=True)
class Done:
    """What an action changed, for the page's confirmation message."""

    reminder_id: int
    action: str
    replan: bool  # the reminder planner must run: a completion or an opt-out stops reminders


def _reminder(conn: Connection, reminder_id: int) -> Any:
    row = conn.execute(
        select(REMINDERS.c.id, REMINDERS.c.case_id, REMINDERS.c.timepoint, REMINDERS.c.status).where(
            REMINDERS.c.id == reminder_id
        )
    ).first()
    if row is None:
        raise WorklistError(f"reminder {reminder_id}: no such reminder")
    return row


def _item(conn: Connection, reminder_id: int) -> dict[str, Any]:
    row = conn.execute(select(ITEMS).where(ITEMS.c.reminder_id == reminder_id)).first()
    return dict(row._mapping) if row else {}


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, date) else v) for k, v in values.items()}


def _note(reminder_id: int, note: str | None) -> str | None:
    text = (note or "").strip()
    if len(text) > NOTE_LIMIT:
        raise WorklistError(f"reminder {reminder_id}: note is longer than {NOTE_LIMIT} characters")
    return text or None


def _record(
    conn: Connection,
    reminder: Any,
    username: str,
    action: str,
    changes: dict[str, Any],
    *,
    outcome: str | None = None,
    note: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """The action row, the item's new state and the audit entry, in the caller's transaction."""
    now = utcnow()
    before = _item(conn, reminder.id)
    conn.execute(
        ACTIONS.insert().values(
            reminder_id=reminder.id,
            at=now,
            username=username,
            action=action,
            outcome=outcome,
            note=note,
            detail=_plain(detail or {}),
        )
    )
    if changes:
        upsert(
            conn,
            ITEMS,
            [{"reminder_id": reminder.id, **changes, "updated_by": username, "updated_at": now}],
            keys=["reminder_id"],
        )
    audited = {k: v for k, v in changes.items()}
    if note:
        audited["note_chars"] = len(note)  # the text itself may name the patient: kept out
    conn.execute(
        AUDIT.insert().values(
            at=now,
            username=username,
            action=f"worklist.{action}",
            target=f"reminder:{reminder.id} ({reminder.case_id} {reminder.timepoint})"[:300],
            before=_plain({k: before.get(k) for k in changes}),
            after=_plain({**audited, **({"outcome": outcome} if outcome else {}), **(detail or {})}),
        )
    )


def record_call(
    engine: Engine, reminder_id: int, username: str, outcome: str, note: str | None = None
) -> Done:
    """A phone call and how it went (reached, left a message, wrong number, declined)."""
    if outcome not in CALL_OUTCOMES:
        raise WorklistError(f"reminder {reminder_id}: outcome must be one of {', '.join(CALL_OUTCOMES)}")
    text = _note(reminder_id, note)
    with engine.begin() as conn:
        reminder = _reminder(conn, reminder_id)
        _record(conn, reminder, username, "call", {"last_outcome": outcome}, outcome=outcome, note=text)
    return Done(reminder_id, "call", replan=False)


def add_note(engine: Engine, reminder_id: int, username: str, note: str) -> Done:
    text = _note(reminder_id, note)
    if text is None:
        raise WorklistError(f"reminder {reminder_id}: the note is empty")
    with engine.begin() as conn:
        _record(conn, _reminder(conn, reminder_id), username, "note", {}, note=text)
    return Done(reminder_id, "note", replan=False)


def assign(engine: Engine, reminder_id: int, username: str, assignee: str | None) -> Done:
    """Assign the reminder to a person (``None`` or empty: unassigned)."""
    who = (assignee or "").strip()[:100] or None
    with engine.begin() as conn:
        _record(conn, _reminder(conn, reminder_id), username, "assign", {"assigned_to": who})
    return Done(reminder_id, "assign", replan=False)


def set_call_back(engine: Engine, reminder_id: int, username: str, on: date | None) -> Done:
    """The day to call the patient again (``None``: no call-back planned)."""
    with engine.begin() as conn:
        _record(conn, _reminder(conn, reminder_id), username, "call_back", {"call_back_on": on})
    return Done(reminder_id, "call_back", replan=False)


def record_completion(
    engine: Engine,
    reminder_id: int,
    username: str,
    how: str,
    on: date,
    note: str | None = None,
    response_id: str | None = None,
) -> Done:
    """The time point was completed with staff (by phone or on paper), with the answers entered
    (``response_id``, a stored PROM response) or without them. The planner then keeps the time
    point completed and sends no further reminder."""
    if how not in COMPLETED_HOW:
        raise WorklistError(f"reminder {reminder_id}: completed must be one of {', '.join(COMPLETED_HOW)}")
    text = _note(reminder_id, note)
    with engine.begin() as conn:
        reminder = _reminder(conn, reminder_id)
        if reminder.status == "cancelled":
            raise WorklistError(f"reminder {reminder_id}: the time point is cancelled; nothing to complete")
        _record(
            conn,
            reminder,
            username,
            "complete",
            {"completed_how": how, "completed_on": on},
            note=text,
            detail={"answers": bool(response_id), **({"response_id": response_id} if response_id else {})},
        )
    return Done(reminder_id, "complete", replan=True)


def record_opt_out(engine: Engine, reminder_id: int, username: str, note: str | None = None) -> Done:
    """The patient asked for no more reminders: every open time point of theirs is cancelled
    at the next planning (the caller re-plans right away)."""
    text = _note(reminder_id, note)
    with engine.begin() as conn:
        reminder = _reminder(conn, reminder_id)
        owner = conn.execute(
            select(CASES.c.source, CASES.c.patient_id).where(CASES.c.id == reminder.case_id)
        ).first()
        if owner is None:
            raise WorklistError(f"reminder {reminder_id}: its case {reminder.case_id} is not in the store")
        conn.execute(
            update(PATIENTS)
            .where(PATIENTS.c.source == owner.source, PATIENTS.c.id == owner.patient_id)
            .values(opted_out=True)
        )
        _record(conn, reminder, username, "opt_out", {}, note=text, detail={"patient_id": owner.patient_id})
    return Done(reminder_id, "opt_out", replan=True)


def staff_completions(conn: Connection) -> dict[tuple[str, str], tuple[str, date]]:
    """(case id, time point) → (how, on) for time points completed with staff; the planner's
    input beside the PROM responses."""
    rows = conn.execute(
        select(REMINDERS.c.case_id, REMINDERS.c.timepoint, ITEMS.c.completed_how, ITEMS.c.completed_on)
        .select_from(ITEMS.join(REMINDERS, REMINDERS.c.id == ITEMS.c.reminder_id))
        .where(ITEMS.c.completed_how.is_not(None))
    )
    return {(r.case_id, r.timepoint): (r.completed_how, r.completed_on) for r in rows}


def actions_of(conn: Connection, reminder_id: int) -> list[dict[str, Any]]:
    """Every action on a reminder, oldest first (the reminder's page)."""
    return [
        dict(r._mapping)
        for r in conn.execute(
            select(ACTIONS).where(ACTIONS.c.reminder_id == reminder_id).order_by(ACTIONS.c.at, ACTIONS.c.id)
        )
    ]
