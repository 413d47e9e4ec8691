"""Reminder query pieces shared by the dispatcher, the worklist, the CLI and the review UI.

Only what must agree everywhere lives here: how a reminder reaches its case and the case's
patient, and which columns describe a reminder's schedule. Each caller adds its own columns,
filters and order on top.
"""

from __future__ import annotations

from sqlalchemy import and_
from sqlalchemy.sql.expression import FromClause, Join

from registry_store.models import Case, Patient, Reminder

CASES = Case.__table__  # type: ignore[attr-defined]
PATIENTS = Patient.__table__  # type: ignore[attr-defined]
REMINDERS = Reminder.__table__  # type: ignore[attr-defined]

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
