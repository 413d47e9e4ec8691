"""The coordinator worklist: for sites whose staff call patients instead of (or after) messages.

"Sending" to the worklist is recording the attempt; the ``reminder_sends`` row is the item.
:func:`worklist_rows` lists what a coordinator should act on: open time points whose latest
attempt went to the worklist, whose reminders could not be delivered (``last_error``), or
with an attempt recorded as sent after a crash without knowing whether it arrived
(``unconfirmed``: an email the crash may have kept from going out; check with the patient).
When no channel sends reminders (``reminders.enabled: false``), every time point due today is
on the list as well: the coordinators are then the only ones who reach the patient.
The export holds contact details by design (it is for calling patients): treat the file as
patient data. Cells a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``, tab or
carriage return at the start) are written with a leading ``'`` (OWASP CSV injection).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import IO, Any, ClassVar

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.engine import Connection

from registry_store.tables import CASES, PATIENTS, REMINDERS
from registry_store.tables import WORKLIST_ITEMS as ITEMS
from scheduler.channels.base import Message
from scheduler.queries import unconfirmed_flag, with_case_and_patient

# What a spreadsheet reads as the start of a formula (CWE-1236).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

COLUMNS = (
    "reminder_id",
    "case_id",
    "procedure_id",
    "patient_id",
    "mrn",
    "phone",
    "email",
    "module",
    "surgery_date",
    "timepoint",
    "due_date",
    "window_end",
    "status",
    "attempts",
    "last_sent_at",
    "last_error",
    "unconfirmed",
)


class WorklistChannel:
    name: ClassVar[str] = "worklist"
    can_confirm: ClassVar[bool] = True

    def can_reach(self, msg: Message) -> bool:
        return True

    def send(self, msg: Message) -> str:
        return "worklist"

    def confirm(self, msg: Message) -> str | None:
        # The pending row already is the worklist entry.
        return "worklist"


def worklist_query(calls_due_on: date | None = None) -> Select[Any]:
    """What a coordinator should act on, oldest due first (the review UI pages it in SQL).

    ``calls_due_on``: with no reminder channel at work, also every open time point whose
    next reminder is due by that day (the coordinators call instead).
    """
    unconfirmed = unconfirmed_flag()
    needs_action = or_(
        and_(
            REMINDERS.c.attempts > 0,
            or_(
                REMINDERS.c.channel.contains("worklist"),
                REMINDERS.c.last_error.is_not(None),
                unconfirmed.element,
            ),
        ),
        *(
            [
                and_(
                    REMINDERS.c.next_attempt_on <= calls_due_on,
                    REMINDERS.c.window_start <= calls_due_on,
                    REMINDERS.c.window_end >= calls_due_on,
                )
            ]
            if calls_due_on is not None
            else []
        ),
    )
    return (
        select(
            REMINDERS.c.id.label("reminder_id"),
            REMINDERS.c.case_id,
            CASES.c.procedure_id,
            CASES.c.patient_id,
            PATIENTS.c.mrn,
            PATIENTS.c.phone,
            PATIENTS.c.email,
            CASES.c.module,
            CASES.c.surgery_date,
            REMINDERS.c.timepoint,
            REMINDERS.c.due_date,
            REMINDERS.c.window_end,
            REMINDERS.c.status,
            REMINDERS.c.attempts,
            REMINDERS.c.last_sent_at,
            REMINDERS.c.last_error,
            unconfirmed,
            REMINDERS.c.window_start,
            REMINDERS.c.next_attempt_on,
            REMINDERS.c.channel,
            ITEMS.c.assigned_to,
            ITEMS.c.call_back_on,
            ITEMS.c.last_outcome,
        )
        .select_from(with_case_and_patient().outerjoin(ITEMS, ITEMS.c.reminder_id == REMINDERS.c.id))
        .where(REMINDERS.c.status.in_(["scheduled", "sent"]), needs_action)
        .order_by(REMINDERS.c.due_date, REMINDERS.c.id)
    )


def calls_due_on(reminders_enabled: bool, today: date) -> date | None:
    """The day whose due time points coordinators call themselves: today when no channel
    sends reminders, else None (the worklist is then what channels could not do)."""
    return None if reminders_enabled else today


def worklist_rows(conn: Connection, calls_due_on: date | None = None) -> list[dict[str, Any]]:
    return [
        {**r._mapping, "unconfirmed": bool(r.unconfirmed)}
        for r in conn.execute(worklist_query(calls_due_on))
    ]


def csv_writer(fh: IO[str]) -> csv.DictWriter[str]:
    """A writer in the worklist's columns, header written (every reminder CSV has this layout)."""
    writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    return writer


def csv_cell(value: Any) -> Any:
    """A cell as written to the CSV: text that a spreadsheet would execute gets a leading ``'``."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: csv_cell(row.get(k)) for k in COLUMNS}


def export_csv(conn: Connection, path: Path, calls_due_on: date | None = None) -> int:
    rows = worklist_rows(conn, calls_due_on)
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv_writer(fh).writerows(csv_row(row) for row in rows)
    return len(rows)
