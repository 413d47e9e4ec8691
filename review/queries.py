"""Read-side queries of the review UI: every page is one or two SQL statements.

Filtering, grouping and pagination happen in SQL so a page costs the same with 100,000 errors
as with ten; Python only shapes the rows of the page it shows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Select, and_, case, column, desc, exists, func, inspect, or_, select, table
from sqlalchemy.engine import Connection

from registry_store.tables import (
    AUDIT_LOG,
    CASES,
    CONDITIONS,
    ERROR_CAUSES,
    HL7_ACKS,
    MAPPING_ERRORS,
    PATIENTS,
    PROCEDURES,
    PROM_RESPONSES,
    REMINDER_SENDS,
    REMINDERS,
    STAGING,
    SYNC_RUNS,
)
from registry_store.timeutil import as_utc as as_utc  # re-exported for the pages
from scheduler.channels.worklist import worklist_query
from scheduler.queries import SCHEDULE_COLUMNS, unconfirmed_flag, with_case_and_patient

ERROR_STATUSES = ("open", "ignored", "resolved")
# "worklist" is the coordinators' call list (scheduler.channels.worklist); "open" and "missing"
# are time points tracked without reminders (baseline): window open, or closed unanswered.
REMINDER_TABS = (
    "due", "worklist", "scheduled", "sent", "completed", "open", "missing", "expired", "cancelled", "all",
)  # fmt: skip


@dataclass(frozen=True)
class Page:
    """One page of a list: its rows, the total and where it sits."""

    rows: list[dict[str, Any]]
    total: int
    page: int
    size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))

    @property
    def first(self) -> int:
        return 0 if not self.rows else (self.page - 1) * self.size + 1

    @property
    def last(self) -> int:
        return (self.page - 1) * self.size + len(self.rows)


def _dicts(result: Any) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in result]


def _paged(conn: Connection, query: Select[Any], page: int, size: int, *, windowed: bool = False) -> Page:
    """One page of ``query`` and the total.

    ``windowed`` gets the total from ``count(*) OVER ()`` in the same statement: right for
    grouped queries (the expensive part, grouping, runs once instead of twice), wrong for long
    sorted lists, where it stops SQLite from keeping only the top rows of the sort.
    """
    if windowed:
        counted = query.add_columns(func.count().over().label("_total"))
        rows = _dicts(conn.execute(counted.limit(size).offset((page - 1) * size)))
        if rows or page == 1:
            total = int(rows[0].pop("_total")) if rows else 0
            for row in rows[1:]:
                del row["_total"]
            return Page(rows, total, page, size)
    total = int(conn.execute(select(func.count()).select_from(query.order_by(None).subquery())).scalar_one())
    page = max(1, min(page, max(1, -(-total // size))))  # past the end (an old link): the last page
    rows = _dicts(conn.execute(query.limit(size).offset((page - 1) * size)))
    return Page(rows, total, page, size)


def _contains(conn: Connection, column: Any, text: str) -> Any:
    """Case-insensitive substring match; SQLite's LIKE already ignores ASCII case and is much
    cheaper than the lower(...) LIKE lower(...) that ILIKE becomes there."""
    pattern = _like(text)
    if conn.dialect.name == "sqlite":
        return column.like(pattern, escape="\\")
    return column.ilike(pattern, escape="\\")


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _filter_terms(
    conn: Connection, equal: Sequence[tuple[Any, str]], q: str, searched: Sequence[Any]
) -> list[Any]:
    """WHERE terms of a list's filter form.

    Each ``(column, value)`` of ``equal`` with a value must match exactly; a search text ``q``
    must occur in one of the ``searched`` columns. Empty fields do not filter.
    """
    cond = [column == value for column, value in equal if value]
    if q:
        text = q.strip()
        cond.append(or_(*(_contains(conn, column, text) for column in searched)))
    return cond


# -- mapping errors by cause ----------------------------------------------------------------


@dataclass(frozen=True)
class CauseFilter:
    status: str = "open"
    code: str = ""
    mapping: str = ""
    resource_type: str = ""
    # Matches cause id, error code and the offending value: codes, never patient text.
    q: str = ""


def _status_is(status: str, *, scan: bool) -> Any:
    """``status = ?``; with ``scan`` written so the planner cannot use the status index.

    Once other filters apply, the rows must be read anyway, and reading the table in order is
    several times faster in SQLite than jumping to each row from the (status, cause_id) index.
    """
    return (MAPPING_ERRORS.c.status + "") == status if scan else MAPPING_ERRORS.c.status == status


def causes_page(conn: Connection, flt: CauseFilter, page: int, size: int) -> Page:
    """Causes with their record counts, biggest first, in two steps.

    First the causes of the page and the total, from (status, cause_id) alone (the index
    covers it when no other filter applies); then the details of just those causes.
    """
    cond = _filter_terms(
        conn,
        [
            (MAPPING_ERRORS.c.code, flt.code),
            (MAPPING_ERRORS.c.mapping, flt.mapping),
            (MAPPING_ERRORS.c.resource_type, flt.resource_type),
        ],
        flt.q,
        (MAPPING_ERRORS.c.value, MAPPING_ERRORS.c.code, MAPPING_ERRORS.c.cause_id),
    )
    counts = (
        select(MAPPING_ERRORS.c.cause_id, func.count().label("count"))
        .where(_status_is(flt.status, scan=bool(cond)), *cond)
        .group_by(MAPPING_ERRORS.c.cause_id)
        .order_by(desc("count"), MAPPING_ERRORS.c.cause_id)
    )
    found = _paged(conn, counts, page, size, windowed=True)
    if not found.rows:
        return found
    ids = [r["cause_id"] for r in found.rows]
    details = {
        r.cause_id: dict(r._mapping)
        for r in conn.execute(
            select(
                MAPPING_ERRORS.c.cause_id,
                func.min(MAPPING_ERRORS.c.code).label("code"),
                func.min(MAPPING_ERRORS.c.mapping).label("mapping"),
                func.min(MAPPING_ERRORS.c.value).label("value"),
                func.min(MAPPING_ERRORS.c.message).label("example_message"),
                func.min(MAPPING_ERRORS.c.resource_type).label("resource_type"),
                func.min(MAPPING_ERRORS.c.field).label("field"),
                func.min(MAPPING_ERRORS.c.first_seen).label("first_seen"),
                func.max(MAPPING_ERRORS.c.last_seen).label("last_seen"),
                func.min(MAPPING_ERRORS.c.resource_id).label("example_first"),
                func.max(MAPPING_ERRORS.c.resource_id).label("example_last"),
            )
            .where(MAPPING_ERRORS.c.status == flt.status, MAPPING_ERRORS.c.cause_id.in_(ids))
            .group_by(MAPPING_ERRORS.c.cause_id)
        )
    }
    rows = [{**details[r["cause_id"]], "count": r["count"]} for r in found.rows]
    return Page(rows, found.total, found.page, found.size)


def error_facets(conn: Connection, status: str) -> dict[str, list[str]]:
    """Distinct error codes, mappings and resource types for the filter menus (one scan)."""
    combos = conn.execute(
        select(MAPPING_ERRORS.c.code, MAPPING_ERRORS.c.mapping, MAPPING_ERRORS.c.resource_type)
        .where(_status_is(status, scan=True))
        .group_by(MAPPING_ERRORS.c.code, MAPPING_ERRORS.c.mapping, MAPPING_ERRORS.c.resource_type)
    ).all()
    return {
        "code": sorted({r.code for r in combos}),
        "mapping": sorted({r.mapping for r in combos}),
        "resource_type": sorted({r.resource_type for r in combos}),
    }


def cause_summary(conn: Connection, cause_id: str) -> dict[str, Any] | None:
    """A cause's identity, its error counts per status and any decision taken about it."""
    rows = _dicts(
        conn.execute(
            select(
                MAPPING_ERRORS.c.status,
                func.min(MAPPING_ERRORS.c.code).label("code"),
                func.min(MAPPING_ERRORS.c.mapping).label("mapping"),
                func.min(MAPPING_ERRORS.c.value).label("value"),
                func.min(MAPPING_ERRORS.c.field).label("field"),
                func.min(MAPPING_ERRORS.c.message).label("message"),
                func.min(MAPPING_ERRORS.c.resource_type).label("resource_type"),
                func.count().label("count"),
                func.min(MAPPING_ERRORS.c.first_seen).label("first_seen"),
                func.max(MAPPING_ERRORS.c.last_seen).label("last_seen"),
            )
            .where(MAPPING_ERRORS.c.status.in_(ERROR_STATUSES), MAPPING_ERRORS.c.cause_id == cause_id)
            .group_by(MAPPING_ERRORS.c.status)
        )
    )
    if not rows:
        return None
    counts = {s: 0 for s in ERROR_STATUSES}
    for r in rows:
        counts[r["status"]] = int(r["count"])
    best = next((r for r in rows if r["status"] == "open"), rows[0])
    decision = conn.execute(select(ERROR_CAUSES).where(ERROR_CAUSES.c.cause_id == cause_id)).first()
    return {
        "cause_id": cause_id,
        **{k: best[k] for k in ("code", "mapping", "value", "field", "message", "resource_type")},
        "counts": counts,
        "first_seen": min(r["first_seen"] for r in rows),
        "last_seen": max(r["last_seen"] for r in rows),
        "decision": dict(decision._mapping) if decision else None,
    }


def cause_records(conn: Connection, cause_id: str, status: str, page: int, size: int) -> Page:
    """The records of a cause (ids only), newest error last."""
    query = (
        select(
            MAPPING_ERRORS.c.id,
            MAPPING_ERRORS.c.staging_id,
            MAPPING_ERRORS.c.source,
            MAPPING_ERRORS.c.resource_type,
            MAPPING_ERRORS.c.resource_id,
            MAPPING_ERRORS.c.field,
            MAPPING_ERRORS.c.status,
            MAPPING_ERRORS.c.first_seen,
            MAPPING_ERRORS.c.last_seen,
        )
        .where(MAPPING_ERRORS.c.cause_id == cause_id, MAPPING_ERRORS.c.status == status)
        .order_by(MAPPING_ERRORS.c.id)
    )
    return _paged(conn, query, page, size)


def cause_examples(conn: Connection, cause_id: str, limit: int = 3) -> list[dict[str, Any]]:
    """A few records of the cause with their raw bytes (open ones first)."""
    open_first = case((MAPPING_ERRORS.c.status == "open", 0), else_=1)
    query = (
        select(
            MAPPING_ERRORS.c.staging_id,
            MAPPING_ERRORS.c.resource_type,
            MAPPING_ERRORS.c.resource_id,
            MAPPING_ERRORS.c.source,
            MAPPING_ERRORS.c.field,
            MAPPING_ERRORS.c.value,
            MAPPING_ERRORS.c.message,
            MAPPING_ERRORS.c.status,
            STAGING.c.raw,
            STAGING.c.content_type,
        )
        .join(STAGING, STAGING.c.id == MAPPING_ERRORS.c.staging_id)
        .where(MAPPING_ERRORS.c.status.in_(ERROR_STATUSES), MAPPING_ERRORS.c.cause_id == cause_id)
        .order_by(open_first, MAPPING_ERRORS.c.id)
        .limit(limit)
    )
    return _dicts(conn.execute(query))


def open_error_count(conn: Connection, cause_id: str) -> int:
    return int(
        conn.execute(
            select(func.count()).where(
                MAPPING_ERRORS.c.cause_id == cause_id, MAPPING_ERRORS.c.status == "open"
            )
        ).scalar_one()
    )


# -- cases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseFilter:
    module: str = ""
    category: str = ""
    q: str = ""  # case, procedure or patient id (logical ids, not names)
    include_removed: bool = False
    # Status of a time point tracked without reminders (the baseline): missing, open, completed.
    baseline: str = ""
    tracked: tuple[str, ...] = ("baseline",)
    surgery_from: date | None = None
    surgery_to: date | None = None
    # A patient by registry pseudonym, or by MRN for roles that see patient data (exact match:
    # no partial MRNs to probe with).
    patient: str = ""
    patient_by_mrn: bool = False


BASELINE_STATUSES = ("missing", "open", "completed")


def cases_page(conn: Connection, flt: CaseFilter, page: int, size: int) -> Page:
    cond = [] if flt.include_removed else [CASES.c.status == "active"]
    cond += _filter_terms(
        conn,
        [(CASES.c.module, flt.module), (CASES.c.category, flt.category)],
        flt.q,
        (CASES.c.id, CASES.c.patient_id, CASES.c.procedure_id),
    )
    if flt.patient:
        match = [PATIENTS.c.pseudonym == flt.patient]
        if flt.patient_by_mrn:
            match.append(PATIENTS.c.mrn == flt.patient)
        cond.append(
            exists().where(
                PATIENTS.c.source == CASES.c.source, PATIENTS.c.id == CASES.c.patient_id, or_(*match)
            )
        )
    if flt.surgery_from:
        cond.append(CASES.c.surgery_date >= flt.surgery_from)
    if flt.surgery_to:
        cond.append(CASES.c.surgery_date <= flt.surgery_to)
    if flt.baseline:
        cond.append(
            exists().where(
                REMINDERS.c.case_id == CASES.c.id,
                REMINDERS.c.timepoint.in_(flt.tracked),
                REMINDERS.c.status == flt.baseline,
            )
        )
    query = (
        select(
            CASES.c.id,
            CASES.c.source,
            CASES.c.patient_id,
            CASES.c.module,
            CASES.c.category,
            CASES.c.surgery_date,
            CASES.c.discharge_date,
            CASES.c.diagnoses,
            CASES.c.revision,
            CASES.c.instrumented,
            CASES.c.status,
        )
        .where(and_(*cond))
        .order_by(desc(CASES.c.surgery_date), CASES.c.id)
    )
    return _paged(conn, query, page, size)


def case_facets(conn: Connection) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in ("module", "category"):
        col = CASES.c[name]
        out[name] = [
            r[0] for r in conn.execute(select(col).where(col.is_not(None)).group_by(col).order_by(col))
        ]
    return out


def case_detail(conn: Connection, case_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(CASES).where(CASES.c.id == case_id)).first()
    if row is None:
        return None
    case = dict(row._mapping)
    src, pid = case["source"], case["patient_id"]
    patient = conn.execute(select(PATIENTS).where(PATIENTS.c.source == src, PATIENTS.c.id == pid)).first()
    procedures = _dicts(
        conn.execute(
            select(PROCEDURES)
            .where(PROCEDURES.c.source == src, PROCEDURES.c.id.in_(list(case["procedure_ids"]) or [""]))
            .order_by(desc(PROCEDURES.c.rank), PROCEDURES.c.id)
        )
    )
    diag_cond = [CONDITIONS.c.source == src, CONDITIONS.c.patient_id == pid]
    reason_ids = [rid for p in procedures for rid in p["reason_condition_ids"]]
    links = [CONDITIONS.c.id.in_(reason_ids)] if reason_ids else []
    if case["encounter_id"]:
        links.append(CONDITIONS.c.encounter_id == case["encounter_id"])
    conditions = (
        _dicts(conn.execute(select(CONDITIONS).where(*diag_cond, or_(*links)).order_by(CONDITIONS.c.code)))
        if links
        else []
    )
    proms = _dicts(
        conn.execute(
            select(PROM_RESPONSES)
            .where(PROM_RESPONSES.c.case_id == case_id)
            .order_by(PROM_RESPONSES.c.completion_date, PROM_RESPONSES.c.instrument)
        )
    )
    reminders = _dicts(
        conn.execute(select(REMINDERS).where(REMINDERS.c.case_id == case_id).order_by(REMINDERS.c.due_date))
    )
    return {
        "case": case,
        "patient": dict(patient._mapping) if patient else None,
        "procedures": procedures,
        "conditions": conditions,
        "proms": proms,
        "reminders": reminders,
    }


# -- reminders --------------------------------------------------------------------------------


def _reminder_query(tab: str, today: date) -> Select[Any]:
    query = (
        select(
            # Named as in the worklist export, so every CSV has the CLI's columns.
            REMINDERS.c.id.label("reminder_id"),
            REMINDERS.c.case_id,
            *SCHEDULE_COLUMNS,
            REMINDERS.c.cancel_reason,
            REMINDERS.c.last_error,
            unconfirmed_flag(),
            CASES.c.procedure_id,
            CASES.c.patient_id,
            CASES.c.source,
            CASES.c.module,
            CASES.c.surgery_date,
            CASES.c.category,
            PATIENTS.c.mrn,
            PATIENTS.c.email,
            PATIENTS.c.phone,
        )
        .select_from(with_case_and_patient(keep_orphans=True))
        .order_by(REMINDERS.c.due_date, REMINDERS.c.id)
    )
    if tab == "due":
        # In its window now and not yet answered: what a coordinator should chase today.
        query = query.where(
            REMINDERS.c.status.in_(["scheduled", "sent"]),
            REMINDERS.c.window_start <= today,
            REMINDERS.c.window_end >= today,
        )
    elif tab != "all":
        query = query.where(REMINDERS.c.status == tab)
    return query


@dataclass(frozen=True)
class WorklistView:
    """The worklist's filters and order (``?reason=``, ``?sort=``, ``?assigned=``)."""

    reason: str = ""  # failed | unconfirmed | call_back | call
    sort: str = "due"  # due | days_left | call_back
    assigned: str = ""


WORKLIST_SORTS = ("due", "days_left", "call_back")


def _worklist_view(query: Select[Any], view: WorklistView, today: date) -> Select[Any]:
    items = query.selected_columns
    if view.reason == "failed":
        query = query.where(items.last_error.is_not(None))
    elif view.reason == "unconfirmed":
        query = query.where(items.unconfirmed)
    elif view.reason == "call_back":
        query = query.where(items.call_back_on <= today)
    elif view.reason == "call":
        query = query.where(items.last_error.is_(None))
    if view.assigned:
        query = query.where(items.assigned_to == view.assigned)
    order = {
        "days_left": (REMINDERS.c.window_end, REMINDERS.c.id),
        "call_back": (items.call_back_on.is_(None), items.call_back_on, REMINDERS.c.id),
    }.get(view.sort)
    return query.order_by(None).order_by(*order) if order else query


def _tab_query(
    tab: str,
    today: date,
    calls_on: date | None = None,
    view: WorklistView | None = None,
    where: tuple[Any, ...] = (),
) -> Select[Any]:
    # The worklist is the scheduler's own query, so the page, its CSV and the CLI's export
    # can never disagree on what is on it. ``where``: the list's date and period filters.
    if tab == "worklist":
        return _worklist_view(worklist_query(calls_on), view or WorklistView(), today).where(*where)
    return _reminder_query(tab, today).where(*where)


def reminders_page(
    conn: Connection,
    tab: str,
    today: date,
    page: int,
    size: int,
    calls_on: date | None = None,
    view: WorklistView | None = None,
    where: tuple[Any, ...] = (),
) -> Page:
    return _paged(conn, _tab_query(tab, today, calls_on, view, where), page, size)


def reminders_all(
    conn: Connection, tab: str, today: date, calls_on: date | None = None, where: tuple[Any, ...] = ()
) -> Iterator[dict[str, Any]]:
    """Every reminder of a tab, streamed (the CSV export)."""
    result = conn.execution_options(stream_results=True, yield_per=1000).execute(
        _tab_query(tab, today, calls_on, where=where)
    )
    for row in result:
        yield {**row._mapping, "unconfirmed": bool(row.unconfirmed)}


def reminder_counts(conn: Connection, today: date, calls_on: date | None = None) -> dict[str, int]:
    counts = {
        r.status: int(r.n)
        for r in conn.execute(
            select(REMINDERS.c.status, func.count().label("n")).group_by(REMINDERS.c.status)
        )
    }
    due = conn.execute(
        select(func.count()).where(
            REMINDERS.c.status.in_(["scheduled", "sent"]),
            REMINDERS.c.window_start <= today,
            REMINDERS.c.window_end >= today,
        )
    ).scalar_one()
    return {
        "due": int(due),
        "worklist": int(
            conn.execute(
                select(func.count()).select_from(worklist_query(calls_on).order_by(None).subquery())
            ).scalar_one()
        ),
        **counts,
        "all": sum(counts.values()),
    }


# -- feed health ------------------------------------------------------------------------------


def recent_runs(conn: Connection, limit: int = 50) -> list[dict[str, Any]]:
    return _dicts(conn.execute(select(SYNC_RUNS).order_by(desc(SYNC_RUNS.c.id)).limit(limit)))


def latest_run_per_source(conn: Connection) -> list[dict[str, Any]]:
    last = select(func.max(SYNC_RUNS.c.id)).group_by(SYNC_RUNS.c.source).scalar_subquery()
    finished = (
        select(SYNC_RUNS.c.source, func.max(SYNC_RUNS.c.finished_at).label("last_success"))
        .where(SYNC_RUNS.c.outcome == "succeeded")
        .group_by(SYNC_RUNS.c.source)
        .subquery()
    )
    query = (
        select(SYNC_RUNS, finished.c.last_success)
        .join(finished, finished.c.source == SYNC_RUNS.c.source, isouter=True)
        .where(SYNC_RUNS.c.id.in_(last))
        .order_by(SYNC_RUNS.c.source)
    )
    return _dicts(conn.execute(query))


def runs_since(conn: Connection, since: datetime) -> list[dict[str, Any]]:
    """Runs started since ``since`` (the nightly chart; a few per night, so few rows)."""
    return _dicts(
        conn.execute(
            select(SYNC_RUNS.c.started_at, SYNC_RUNS.c.source, SYNC_RUNS.c.counts, SYNC_RUNS.c.outcome)
            .where(SYNC_RUNS.c.started_at >= since)
            .order_by(SYNC_RUNS.c.started_at)
        )
    )


def recent_acks(conn: Connection, limit: int = 50) -> list[dict[str, Any]]:
    query = select(HL7_ACKS).order_by(desc(HL7_ACKS.c.received_at), desc(HL7_ACKS.c.id)).limit(limit)
    return _dicts(conn.execute(query))


def ack_counts(conn: Connection, since: datetime) -> dict[str, int]:
    return {
        r.ack_code: int(r.n)
        for r in conn.execute(
            select(HL7_ACKS.c.ack_code, func.count().label("n"))
            .where(HL7_ACKS.c.received_at >= since)
            .group_by(HL7_ACKS.c.ack_code)
            .order_by(HL7_ACKS.c.ack_code)
        )
    }


# -- audit and metrics ------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditFilter:
    username: str = ""
    action: str = ""
    since: datetime | None = None  # UTC instants (site-local days, converted by the page)
    until: datetime | None = None


def audit_page(conn: Connection, page: int, size: int, flt: AuditFilter | None = None) -> Page:
    query = select(AUDIT_LOG).order_by(desc(AUDIT_LOG.c.id))
    if flt is not None:
        if flt.username:
            query = query.where(AUDIT_LOG.c.username == flt.username)
        if flt.action:
            query = query.where(AUDIT_LOG.c.action == flt.action)
        if flt.since is not None:
            query = query.where(AUDIT_LOG.c.at >= flt.since)
        if flt.until is not None:
            query = query.where(AUDIT_LOG.c.at < flt.until)
    return _paged(conn, query, page, size)


def audit_facets(conn: Connection) -> dict[str, list[str]]:
    def distinct(column: Any) -> list[str]:
        return list(conn.execute(select(column).distinct().order_by(column)).scalars())

    return {"username": distinct(AUDIT_LOG.c.username), "action": distinct(AUDIT_LOG.c.action)}


def store_counts(conn: Connection, jobstore_table: str | None = None) -> dict[str, Any]:
    """What /metrics exports: a handful of grouped counts, each one indexed statement."""
    records = {
        (r.source, r.resource_type, r.status): int(r.n)
        for r in conn.execute(
            select(STAGING.c.source, STAGING.c.resource_type, STAGING.c.status, func.count().label("n"))
            .group_by(STAGING.c.source, STAGING.c.resource_type, STAGING.c.status)
        )
    }
    staged: dict[str, int] = {}
    for (_source, _rtype, status), n in records.items():
        staged[status] = staged.get(status, 0) + n
    errors = {
        r.status: int(r.n)
        for r in conn.execute(
            select(MAPPING_ERRORS.c.status, func.count().label("n")).group_by(MAPPING_ERRORS.c.status)
        )
    }
    cases = int(conn.execute(select(func.count()).where(CASES.c.status == "active")).scalar_one())
    reminders = {
        r.status: int(r.n)
        for r in conn.execute(
            select(REMINDERS.c.status, func.count().label("n")).group_by(REMINDERS.c.status)
        )
    }
    sends = {
        (r.channel, r.status): int(r.n)
        for r in conn.execute(
            select(REMINDER_SENDS.c.channel, REMINDER_SENDS.c.status, func.count().label("n")).group_by(
                REMINDER_SENDS.c.channel, REMINDER_SENDS.c.status
            )
        )
    }
    acks = {
        (r.source, r.ack_code): int(r.n)
        for r in conn.execute(
            select(HL7_ACKS.c.source, HL7_ACKS.c.ack_code, func.count().label("n")).group_by(
                HL7_ACKS.c.source, HL7_ACKS.c.ack_code
            )
        )
    }
    return {
        "records": records,
        "staged": staged,
        "errors": errors,
        "cases": cases,
        "reminders": reminders,
        "sends": sends,
        "acks": acks,
        "runs": latest_run_per_source(conn),
        "next_runs": next_job_runs(conn, jobstore_table) if jobstore_table else {},
    }


def next_job_runs(conn: Connection, jobstore_table: str) -> dict[str, float | None]:
    """Next run time (Unix seconds, None when paused) of each job in APScheduler's job table;
    empty when no daemon has created the table yet."""
    if not inspect(conn).has_table(jobstore_table):
        return {}
    jobs = table(jobstore_table, column("id"), column("next_run_time"))
    return {
        str(r.id): float(r.next_run_time) if r.next_run_time is not None else None
        for r in conn.execute(select(jobs.c.id, jobs.c.next_run_time))
    }


