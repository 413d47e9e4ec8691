"""The coordinator worklist: for sites whose staff call patients instead of (or after) messages.

"Sending" to the worklist is recording the attempt; the ``reminder_sends`` row is the item.
:func:`worklist_rows` lists what a coordinator should act on: open time points whose latest
attempt went to the worklist, whose reminders could not be delivered (``last_error``), or
with an attempt recorded as sent after a crash without knowing whether it arrived
(``unconfirmed``: an email the crash may have kept from going out; check with the patient).
The export holds contact details by design (it is for calling patients): treat the file as
patient data.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, ClassVar

from sqlalchemy import Select, or_, select
from sqlalchemy.engine import Connection

from registry_store.tables import CASES, PATIENTS, REMINDERS
from scheduler.channels.base import Message
from scheduler.queries import unconfirmed_flag, with_case_and_patient

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


def worklist_query() -> Select[Any]:
    """What a coordinator should act on, oldest due first (the review UI pages it in SQL)."""
    unconfirmed = unconfirmed_flag()
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
        )
        .select_from(with_case_and_patient())
        .where(
            REMINDERS.c.status.in_(["scheduled", "sent"]),
            REMINDERS.c.attempts > 0,
            or_(
                REMINDERS.c.channel.contains("worklist"),
                REMINDERS.c.last_error.is_not(None),
                unconfirmed.element,
            ),
        )
        .order_by(REMINDERS.c.due_date, REMINDERS.c.id)
    )


def worklist_rows(conn: Connection) -> list[dict[str, Any]]:
    return [{**r._mapping, "unconfirmed": bool(r.unconfirmed)} for r in conn.execute(worklist_query())]


def csv_writer(fh: IO[str]) -> csv.DictWriter[str]:
    """A writer in the worklist's columns, header written (every reminder CSV has this layout)."""
    writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    return writer


def csv_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: "" if row.get(k) is None else row[k] for k in COLUMNS}


def export_csv(conn: Connection, path: Path) -> int:
    rows = worklist_rows(conn)
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv_writer(fh).writerows(csv_row(row) for row in rows)
    return len(rows)
