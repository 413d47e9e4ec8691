"""Reminder query pieces shared by the dispatcher, the worklist, the CLI and the review UI.

Only what must agree everywhere lives here: how a reminder reaches its case and the case's
patient, and which columns describe a reminder's schedule. Each caller adds its own columns,
filters and order on top.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date

from sqlalchemy import Engine, and_, exists
from sqlalchemy.engine import Connection
from sqlalchemy.sql.expression import ColumnElement, FromClause, Join, Label

from registry_store.tables import CASES, PATIENTS, REMINDER_SENDS, REMINDERS
from scheduler.planner import ACTIVE

# provider_id of a send recorded as sent after a crash without knowing whether it arrived
# (``reminders.unconfirmed: assume_sent``): a coordinator should check with the patient.
UNCONFIRMED = "unconfirmed"

# A reminder's schedule and delivery state, in the order the listings show them.
SCHEDULE_COLUMNS = (
    REMINDERS.c.timepoint,
    REMINDERS.c.due_date,
    REMINDERS.c.window_start,
    REMINDERS.c.window_end,
    REMINDERS.c.status,
    REMINDERS.c.attempts,
    REMINDERS.c.next_attempt_on,
    REMINDERS.c.last_sent_at,
    REMINDERS.c.channel,
)


def with_case_and_patient(reminders: FromClause = REMINDERS, *, keep_orphans: bool = False) -> Join:
    """``reminders`` (or a join holding them) joined to each reminder's case and its patient.

    A patient is keyed by (source, id): two sources may use the same id. The patient is an
    outer join, so a reminder whose patient row is missing still counts (with no contact
    details). ``keep_orphans`` keeps reminders whose case is gone as well.
    """
    joined: Join = reminders.join(CASES, CASES.c.id == REMINDERS.c.case_id, isouter=keep_orphans)
    return joined.outerjoin(
        PATIENTS, and_(PATIENTS.c.source == CASES.c.source, PATIENTS.c.id == CASES.c.patient_id)
    )


def unconfirmed_flag() -> Label[bool]:
    """``unconfirmed``: whether any attempt of the reminder was recorded without confirmation."""
    return (
        exists()
        .where(REMINDER_SENDS.c.reminder_id == REMINDERS.c.id, REMINDER_SENDS.c.provider_id == UNCONFIRMED)
        .label("unconfirmed")
    )


def sendable(today: date, max_attempts: int) -> list[ColumnElement[bool]]:
    """Reminders that may get another attempt today: open, window open, attempts left.

    ``due_now`` adds that the next attempt's day has come (what ``send --due`` sends and
    ``list --due`` shows); ``send --case`` sends a sendable reminder before its day.
    """
    return [
        REMINDERS.c.status.in_(ACTIVE),
        REMINDERS.c.next_attempt_on.is_not(None),
        REMINDERS.c.window_start <= today,
        REMINDERS.c.window_end >= today,
        REMINDERS.c.attempts < max_attempts,
    ]


def due_now(today: date, max_attempts: int) -> list[ColumnElement[bool]]:
    return [*sendable(today, max_attempts), REMINDERS.c.next_attempt_on <= today]


@contextmanager
def rolled_back(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that is always rolled back: plan and read, save nothing."""
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            yield conn
        finally:
            trans.rollback()
