"""Registry store tables.

Registry rows are keyed by ``(source, id)``: the id is the FHIR logical id as the hospital
sent it, and the source is the configured feed name, so two feeds can never overwrite each
other's resources. Rows derived from a staged record carry its ``staging_id`` so a mapping fix
can find and replace exactly what that record produced.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Column, Index, LargeBinary, Text, UniqueConstraint, true
from sqlmodel import Field, SQLModel

from registry_store.timeutil import utcnow


def _json_field(default: Any = None) -> Any:
    # A fresh Column per field: SQLAlchemy binds a Column object to exactly one table.
    factory = (lambda: list(default)) if isinstance(default, list) else (lambda: dict(default or {}))
    return Field(default_factory=factory, sa_column=Column(JSON, nullable=False))


class StagedRecord(SQLModel, table=True):
    """A record exactly as received, before mapping."""

    __tablename__ = "staging"
    __table_args__ = (
        UniqueConstraint("source", "resource_type", "resource_id", name="uq_staging_identity"),
        Index("ix_staging_status_type", "status", "resource_type"),
        # The mapper's "next pending batch" (status = 'pending' AND id > ? ORDER BY id) walks
        # this index instead of sorting every pending row per batch (quadratic in the backlog).
        Index("ix_staging_status_id", "status", "id"),
        # What a staged v2 message converted into (origin "hl7v2 <message identity>"), found
        # again when it is re-converted so records it no longer makes are deleted.
        Index("ix_staging_source_origin", "source", "origin"),
    )

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=100)
    resource_type: str = Field(max_length=64)
    resource_id: str = Field(max_length=256)
    version_id: str | None = Field(default=None, max_length=64)
    last_updated: str | None = Field(default=None, max_length=40)
    content_type: str = Field(default="application/fhir+json", max_length=64)
    content_hash: str = Field(max_length=64)
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    origin: str = Field(default="", max_length=512)
    # pending -> mapped | failed | out_of_scope | invalid | deleted
    status: str = Field(default="pending", max_length=16)
    received_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    mapped_at: datetime | None = None


class SourceState(SQLModel, table=True):
    """A source's committed cursor (watermarks, export status URL, ...)."""

    __tablename__ = "source_state"

    source: str = Field(primary_key=True, max_length=100)
    state: dict[str, Any] = _json_field({})
    updated_at: datetime = Field(default_factory=utcnow)


class Patient(SQLModel, table=True):
    __tablename__ = "patients"

    source: str = Field(primary_key=True, max_length=100)
    id: str = Field(primary_key=True, max_length=256)
    staging_id: int | None = Field(default=None, index=True)
    mrn: str | None = Field(default=None, max_length=128)
    # Keyed HMAC of site id + MRN: what the registry sees instead of the MRN.
    pseudonym: str | None = Field(default=None, max_length=64, index=True)
    birth_date: date | None = None
    sex: str | None = Field(default=None, max_length=16)
    deceased: bool = False
    deceased_date: date | None = None
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=64)
    # Set by site staff (CLI / review UI); cancels and prevents PROM reminders.
    opted_out: bool = False
    # ADT^A40/A47: this patient was merged into that one (same source), which took over its
    # records, cases and reminders (registry_store/patient_merge.py).
    merged_into: str | None = Field(default=None, max_length=256)


class Encounter(SQLModel, table=True):
    __tablename__ = "encounters"
    # Case assembly reads "source = ? AND patient_id IN (...)": one index seek per patient.
    __table_args__ = (Index("ix_encounters_source_patient", "source", "patient_id"),)

    source: str = Field(primary_key=True, max_length=100)
    id: str = Field(primary_key=True, max_length=256)
    staging_id: int | None = Field(default=None, index=True)
    patient_id: str | None = Field(default=None, max_length=256, index=True)
    status: str | None = Field(default=None, max_length=32)
    admit_date: date | None = None
    discharge_date: date | None = None


class Procedure(SQLModel, table=True):
    __tablename__ = "procedures"
    # Case assembly reads "source = ? AND patient_id IN (...)": one index seek per patient.
    __table_args__ = (Index("ix_procedures_source_patient", "source", "patient_id"),)

    source: str = Field(primary_key=True, max_length=100)
    id: str = Field(primary_key=True, max_length=256)
    staging_id: int | None = Field(default=None, index=True)
    patient_id: str = Field(max_length=256, index=True)
    encounter_id: str | None = Field(default=None, max_length=256)
    status: str | None = Field(default=None, max_length=32)
    surgery_date: date
    codes: list[str] = _json_field([])
    category: str | None = Field(default=None, max_length=64)
    module: str | None = Field(default=None, max_length=16)
    # index: can anchor a case; addon / instrumentation / revision only qualify one.
    role: str = Field(default="index", max_length=16)
    rank: int = 0
    revision: bool = False
    instrumented: bool = False
    reason_condition_ids: list[str] = _json_field([])
    reason_codes: list[str] = _json_field([])
    surgeon: str | None = Field(default=None, max_length=256)


class Condition(SQLModel, table=True):
    __tablename__ = "conditions"
    # Case assembly reads "source = ? AND patient_id IN (...)": one index seek per patient.
    __table_args__ = (Index("ix_conditions_source_patient", "source", "patient_id"),)

    source: str = Field(primary_key=True, max_length=100)
    id: str = Field(primary_key=True, max_length=256)
    staging_id: int | None = Field(default=None, index=True)
    patient_id: str = Field(max_length=256, index=True)
    encounter_id: str | None = Field(default=None, max_length=256)
    code: str = Field(max_length=32)
    category: str = Field(max_length=64)
    region: str | None = Field(default=None, max_length=16)
    verification_status: str | None = Field(default=None, max_length=32)
    recorded_date: date | None = None


class PromResponse(SQLModel, table=True):
    __tablename__ = "prom_responses"
    # Case assembly reads "source = ? AND patient_id IN (...)": one index seek per patient.
    __table_args__ = (Index("ix_prom_responses_source_patient", "source", "patient_id"),)

    source: str = Field(primary_key=True, max_length=100)
    id: str = Field(primary_key=True, max_length=256)
    staging_id: int | None = Field(default=None, index=True)
    patient_id: str = Field(max_length=256, index=True)
    instrument: str = Field(max_length=32)
    status: str | None = Field(default=None, max_length=32)
    authored: datetime | None = None
    completion_date: date
    answered: int = 0
    scores: dict[str, Any] = _json_field({})
    answers: dict[str, Any] = _json_field({})
    # Filled by case assembly: which case and time point this response belongs to.
    case_id: str | None = Field(default=None, max_length=400, index=True)
    timepoint: str | None = Field(default=None, max_length=16)


class Case(SQLModel, table=True):
    """One index spine procedure with its patient, encounter dates and diagnoses."""

    __tablename__ = "cases"
    # Case assembly reads "source = ? AND patient_id IN (...)": one index seek per patient.
    __table_args__ = (Index("ix_cases_source_patient", "source", "patient_id"),)

    id: str = Field(primary_key=True, max_length=400)
    source: str = Field(max_length=100, index=True)
    procedure_id: str = Field(max_length=256)
    patient_id: str = Field(max_length=256, index=True)
    encounter_id: str | None = Field(default=None, max_length=256)
    module: str | None = Field(default=None, max_length=16)
    category: str | None = Field(default=None, max_length=64)
    procedure_ids: list[str] = _json_field([])
    codes: list[str] = _json_field([])
    surgery_date: date
    admission_date: date | None = None
    discharge_date: date | None = None
    diagnoses: list[str] = _json_field([])
    diagnosis_codes: list[str] = _json_field([])
    revision: bool = False
    instrumented: bool = False
    # active | removed (no longer produced by the source data) | withdrawn (see status_reason)
    status: str = Field(default="active", max_length=16)
    # Why a case is not active: "procedure entered-in-error", "deleted at source",
    # "withdrawn by NAME: reason".
    status_reason: str | None = Field(default=None, max_length=500)
    updated_at: datetime = Field(default_factory=utcnow)


class MappingError(SQLModel, table=True):
    """Why a staged record could not be (fully) mapped. Grouped into causes by ``cause_id``."""

    __tablename__ = "mapping_errors"
    __table_args__ = (
        UniqueConstraint("staging_id", "code", "field", name="uq_mapping_error_identity"),
        Index("ix_mapping_errors_status_cause", "status", "cause_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    staging_id: int = Field(index=True)
    source: str = Field(max_length=100)
    resource_type: str = Field(max_length=64)
    resource_id: str = Field(max_length=256)
    mapping: str = Field(default="", max_length=100)
    field: str = Field(default="", max_length=200)
    # Which rule failed (``required``, ``translate:<code map>``, a rule's code, ...).
    rule: str = Field(default="", max_length=100)
    # error: the record is not (fully) mapped; warning: mapped, but staff should look.
    severity: str = Field(default="error", max_length=16)
    code: str = Field(max_length=80)
    value: str | None = Field(default=None, max_length=200)
    message: str = Field(sa_column=Column(Text, nullable=False))
    cause_id: str = Field(max_length=16)
    # open | resolved | ignored
    status: str = Field(default="open", max_length=16)
    first_seen: datetime = Field(default_factory=utcnow)
    last_seen: datetime = Field(default_factory=utcnow)


class SyncRun(SQLModel, table=True):
    __tablename__ = "sync_runs"

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=100, index=True)
    kind: str = Field(default="sync", max_length=16)
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    # running | succeeded | failed | interrupted
    outcome: str = Field(default="running", max_length=16)
    counts: dict[str, Any] = _json_field({})
    watermark: dict[str, Any] = _json_field({})
    error: str | None = Field(default=None, sa_column=Column(Text))


class Reminder(SQLModel, table=True):
    """A PROM time point of a case: when it is due, its window, and where it stands."""

    __tablename__ = "reminders"
    __table_args__ = (UniqueConstraint("case_id", "timepoint", name="uq_reminder_case_timepoint"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: str = Field(max_length=400, index=True)
    timepoint: str = Field(max_length=16)
    due_date: date
    window_start: date
    window_end: date
    # scheduled | sent | completed | expired | cancelled
    status: str = Field(default="scheduled", max_length=16, index=True)
    attempts: int = 0
    next_attempt_on: date | None = None
    last_sent_at: datetime | None = None
    channel: str | None = Field(default=None, max_length=32)
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    completed_response_id: str | None = Field(default=None, max_length=256)
    cancel_reason: str | None = Field(default=None, max_length=64)
    # What the due date counts from: surgery | discharge | surgery_fallback (no usable discharge).
    anchor: str | None = Field(default=None, max_length=24)
    # Why the due date moved after attempts went out (shown with the attempts).
    note: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class ReminderSend(SQLModel, table=True):
    """One attempt to send one reminder on one channel; the idempotency key makes it once."""

    __tablename__ = "reminder_sends"

    id: int | None = Field(default=None, primary_key=True)
    reminder_id: int = Field(index=True)
    attempt: int
    channel: str = Field(max_length=32)
    # case id + time point + attempt (+ channel): the same key is never sent twice.
    idempotency_key: str = Field(max_length=400, unique=True)
    # pending | sent | failed
    status: str = Field(default="pending", max_length=16)
    tries: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None
    provider_id: str | None = Field(default=None, max_length=256)
    error: str | None = Field(default=None, sa_column=Column(Text))


class ReminderClick(SQLModel, table=True):
    """A reminder link opened (GET /r/{token}): which reminder and attempt, and when only."""

    __tablename__ = "reminder_clicks"

    id: int | None = Field(default=None, primary_key=True)
    reminder_id: int = Field(index=True)
    attempt: int
    clicked_at: datetime = Field(default_factory=utcnow)


class JobLock(SQLModel, table=True):
    """A lease so two adapter processes sharing one store never run the same job at once."""

    __tablename__ = "job_locks"

    name: str = Field(primary_key=True, max_length=100)
    owner: str = Field(max_length=200)
    acquired_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    # The holder: a lease whose process is gone (same host, pid dead) is taken over at once.
    host: str | None = Field(default=None, max_length=255)
    pid: int | None = None
    heartbeat_at: datetime | None = None


class User(SQLModel, table=True):
    """A review UI user; ``role`` is viewer, reviewer or admin."""

    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(max_length=100, unique=True)
    password_hash: str = Field(max_length=300)
    role: str = Field(default="viewer", max_length=16)
    disabled: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    last_login_at: datetime | None = None
    # Consecutive failed sign-ins, and until when the account is locked after too many.
    failed_logins: int = 0
    locked_until: datetime | None = None
    # Bumped on sign-out and password change: sessions carrying an older value are void.
    session_version: int = 0


class AuditEntry(SQLModel, table=True):
    """Who did what to registry data through the review tools, with before and after."""

    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    username: str = Field(max_length=100)
    action: str = Field(max_length=64)
    target: str = Field(max_length=300)
    before: dict[str, Any] = _json_field({})
    after: dict[str, Any] = _json_field({})


class ErrorCause(SQLModel, table=True):
    """Decisions about a cause of mapping errors (e.g. ignored, with the reason)."""

    __tablename__ = "error_causes"

    cause_id: str = Field(primary_key=True, max_length=16)
    # open | ignored
    status: str = Field(default="open", max_length=16)
    reason: str | None = Field(default=None, sa_column=Column(Text))
    updated_by: str | None = Field(default=None, max_length=100)
    updated_at: datetime = Field(default_factory=utcnow)


class Hl7Ack(SQLModel, table=True):
    """What the MLLP listener answered to each message (the feed-health page shows them)."""

    __tablename__ = "hl7_acks"

    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = Field(default_factory=utcnow, index=True)
    source: str = Field(max_length=100)
    sending_facility: str | None = Field(default=None, max_length=200)
    control_id: str | None = Field(default=None, max_length=200)
    message_type: str | None = Field(default=None, max_length=40)
    ack_code: str = Field(max_length=2)
    error: str | None = Field(default=None, sa_column=Column(Text))
    staging_id: int | None = None
    # False: the connection was lost before the ACK reached the sender, who will resend.
    delivered: bool = Field(default=True, sa_column=Column(Boolean, nullable=False, server_default=true()))


class Submission(SQLModel, table=True):
    """One package sent to the registry (the ledger): what period, where, and its digest.

    Written only after delivery succeeded (the SFTP rename, or the folder's atomic move), so a
    row here always means the registry has the file.
    """

    __tablename__ = "submissions"

    id: int | None = Field(default=None, primary_key=True)
    # 2025Q3, or since-2025-07-01 for a --since run.
    period: str = Field(max_length=32, index=True)
    site_id: str = Field(max_length=100)
    created_at: datetime = Field(default_factory=utcnow)
    delivered_at: datetime = Field(default_factory=utcnow)
    # folder:<path> or sftp://user@host:port/dir (never a password: key auth only).
    destination: str = Field(max_length=500)
    package_name: str = Field(max_length=200)
    package_sha256: str = Field(max_length=64)
    dictionary_version: str = Field(max_length=32)
    counts: dict[str, Any] = _json_field({})


class SubmissionItem(SQLModel, table=True):
    """A case as it was sent in one submission: new, changed, or withdrawn, with the digest of
    its rows so the next run sends it again only when something changed."""

    __tablename__ = "submission_items"
    __table_args__ = (Index("ix_submission_items_case", "case_id", "submission_id"),)

    id: int | None = Field(default=None, primary_key=True)
    submission_id: int = Field(index=True)
    case_id: str = Field(max_length=400)
    # What the registry knows the case by (keyed HMAC of the case id; never the MRN).
    case_key: str = Field(max_length=64, index=True)
    # new | changed | withdrawn
    action: str = Field(max_length=16)
    content_hash: str = Field(max_length=64)


class CaseOutcome(SQLModel, table=True):
    """Outcome fields of a case as last computed (mappings/outcomes.py), for the review UI,
    measures and submission."""

    __tablename__ = "case_outcomes"

    case_id: str = Field(primary_key=True, max_length=400)
    source: str = Field(max_length=100, index=True)
    outcomes: dict[str, Any] = _json_field({})
    computed_at: datetime = Field(default_factory=utcnow)


class WorklistItem(SQLModel, table=True):
    """Where a coordinator's work on one reminder (a case's time point) stands.

    One row per reminder that someone acted on: who it is assigned to, when to call back, the
    last call outcome, and a completion recorded by staff (answers taken by phone or on paper)
    that the reminder planner treats like a response: the time point is completed and no
    further reminder goes out.
    """

    __tablename__ = "worklist_items"

    reminder_id: int = Field(primary_key=True)
    assigned_to: str | None = Field(default=None, max_length=100)
    call_back_on: date | None = None
    # reached | left_message | wrong_number | declined
    last_outcome: str | None = Field(default=None, max_length=24)
    # phone | paper: completed with staff, with or without answers entered here
    completed_how: str | None = Field(default=None, max_length=16)
    completed_on: date | None = None
    updated_by: str | None = Field(default=None, max_length=100)
    updated_at: datetime = Field(default_factory=utcnow)


class WorklistAction(SQLModel, table=True):
    """One thing a coordinator did on the worklist (a call, a note, an assignment, ...)."""

    __tablename__ = "worklist_actions"

    id: int | None = Field(default=None, primary_key=True)
    reminder_id: int = Field(index=True)
    at: datetime = Field(default_factory=utcnow)
    username: str = Field(max_length=100)
    # call | note | assign | call_back | complete | opt_out
    action: str = Field(max_length=24)
    outcome: str | None = Field(default=None, max_length=24)
    note: str | None = Field(default=None, sa_column=Column(Text))
    detail: dict[str, Any] = _json_field({})


class ValidationVerdict(SQLModel, table=True):
    """What structural validation said of a staged record's exact bytes, so a remap of
    unchanged raw input never validates it again (``registry_store/verdicts.py``)."""

    __tablename__ = "validation_verdicts"

    # SHA-256 of the staged raw bytes (not the meta-blind content hash: meta is validated too).
    digest: str = Field(primary_key=True, max_length=64)
    # Which validator gave it (model package and version): another one decides afresh.
    validator: str = Field(primary_key=True, max_length=64)
    # The issues as dicts (``[]``: clean); the mapping's view is derived from them again.
    issues: list[dict[str, Any]] = _json_field([])
    checked_at: datetime = Field(default_factory=utcnow)


class CaseQueue(SQLModel, table=True):
    """Patients whose cases must be assembled again (their registry rows changed).

    Written in the same transaction as the rows, drained at the end of a mapping run, so each
    patient is assembled once per run however many batches touched them, and a run killed
    before the drain leaves the work for the next one (``registry_store/case_queue.py``).
    """

    __tablename__ = "case_queue"

    source: str = Field(primary_key=True, max_length=100)
    patient_id: str = Field(primary_key=True, max_length=256)
