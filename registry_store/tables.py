"""Every table of the registry store, defined once, as a typed SQLAlchemy Core handle.

The models (``registry_store.models``) declare the schema; code that builds statements uses
these handles (``CASES.c.status``). SQLModel does not type ``Model.__table__``, so the one cast
that makes it a ``Table`` lives here instead of beside every query.

Anyone may read through these handles (queries live beside the code that needs them). Writes
go through the named functions of the ``registry_store`` modules (``cases``, ``reminders``,
``accounts``, ...): ``tests/architecture/test_layers.py`` fails on an INSERT, UPDATE or
DELETE issued anywhere else.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Column, String, Table
from sqlmodel import SQLModel

from registry_store.models import (
    AuditEntry,
    Case,
    CaseOutcome,
    CaseQueue,
    Condition,
    Encounter,
    ErrorCause,
    Hl7Ack,
    JobLock,
    MappingError,
    Patient,
    Procedure,
    PromResponse,
    Reminder,
    ReminderClick,
    ReminderSend,
    SourceState,
    StagedRecord,
    Submission,
    SubmissionItem,
    SyncRun,
    User,
    ValidationVerdict,
    WorklistAction,
    WorklistItem,
)


def column_length(column: Column[Any]) -> int:
    """The declared length of a string column, so size checks follow the model."""
    length = cast(String, column.type).length
    if length is None:
        raise ValueError(f"column {column.name} has no length")
    return int(length)


def table_of(model: type[SQLModel]) -> Table:
    """The Core table of a ``table=True`` model."""
    return cast(Table, model.__table__)  # type: ignore[attr-defined]


STAGING = table_of(StagedRecord)
SOURCE_STATE = table_of(SourceState)
PATIENTS = table_of(Patient)
ENCOUNTERS = table_of(Encounter)
PROCEDURES = table_of(Procedure)
CONDITIONS = table_of(Condition)
PROM_RESPONSES = table_of(PromResponse)
CASES = table_of(Case)
MAPPING_ERRORS = table_of(MappingError)
SYNC_RUNS = table_of(SyncRun)
REMINDERS = table_of(Reminder)
REMINDER_SENDS = table_of(ReminderSend)
REMINDER_CLICKS = table_of(ReminderClick)
JOB_LOCKS = table_of(JobLock)
USERS = table_of(User)
AUDIT_LOG = table_of(AuditEntry)
ERROR_CAUSES = table_of(ErrorCause)
HL7_ACKS = table_of(Hl7Ack)
SUBMISSIONS = table_of(Submission)
SUBMISSION_ITEMS = table_of(SubmissionItem)
CASE_OUTCOMES = table_of(CaseOutcome)
WORKLIST_ITEMS = table_of(WorklistItem)
WORKLIST_ACTIONS = table_of(WorklistAction)
CASE_QUEUE = table_of(CaseQueue)
VALIDATION_VERDICTS = table_of(ValidationVerdict)

# Registry tables a mapping may write to, by the name mapping files use.
MAPPING_TARGETS: dict[str, Table] = {
    "patients": PATIENTS,
    "encounters": ENCOUNTERS,
    "procedures": PROCEDURES,
    "conditions": CONDITIONS,
    "prom_responses": PROM_RESPONSES,
}
