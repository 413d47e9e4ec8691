"""Reminder planning: every case's PROM time points, from configuration, as ``reminders`` rows.

Planning is a pure function of the case (dates, module, status), the patient (deceased,
opted out), the PROM responses case assembly placed on the case, the attempts already made,
and "today" in the site's time zone. Running it again changes nothing unless one of those
changed, so it runs before every dispatch and after every sync:

- due date = anchor + ``due_days``, window = anchor + [``window_start_days``, ``window_end_days``],
  in whole calendar days (dates, never timestamps, so DST and leap days cannot shift them);
  the anchor is the discharge date for ``anchor: discharge`` (the surgery date, recorded as
  ``surgery_fallback``, when the discharge is unknown or before the surgery);
- a due date that moves after attempts went out (the discharge arrived later) gets a note
  saying so; the next attempt counts from the new due date;
- attempt k goes out on ``first + (k-1) * repeat_every_days`` (first = due date minus
  ``first_reminder_days_before``, not before the window opens), never sooner than
  ``repeat_every_days`` after the previous one actually went out, up to ``max_attempts``,
  while the window is open;
- a time point a coordinator recorded as completed by phone or on paper (``worklist_items``)
  is completed like one with a response;
- status precedence: completed > cancelled > expired/missing > sent > scheduled. A response
  in the window completes the time point whenever it came (even before the first reminder);
  opt-out or a withdrawn/removed case cancel what is still open; a death cancels what was
  still open on the date of death (a window that had closed before stays expired/missing, so
  completeness reports keep showing the missing data). Sent
  attempts stay in ``reminder_sends`` as history.

The planner never writes ``attempts``/``last_sent_at`` (the dispatcher owns them) and updates a
row only if its ``attempts`` is still what it read, so a dispatch committing in between is
never overwritten with a stale next-attempt date.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import exists, func, select
from sqlalchemy.engine import Connection

from mappings.cases import discharge_anchor
from registry_adapter.config import Settings, TimepointWindow
from registry_store import reminders
from registry_store.db import keyset_chunks
from registry_store.tables import CASES, PATIENTS, PROM_RESPONSES, REMINDERS
from registry_store.timeutil import utcnow
from registry_store.worklist import staff_completions
from scheduler.settings import RemindersSettings

ACTIVE = ("scheduled", "sent")
# Responses that count; in-progress or stopped forms do not complete a time point.
COUNTING_RESPONSE_STATUSES = (None, "completed", "amended")
_PLANNED_FIELDS = (
    "due_date",
    "window_start",
    "window_end",
    "status",
    "next_attempt_on",
    "completed_response_id",
    "cancel_reason",
    "anchor",
)


class PlanningError(ValueError):
    """The reminder configuration does not fit the PROM time points."""


@dataclass(frozen=True, slots=True)
class CaseFacts:
    case_id: str
    module: str | None
    surgery_date: date
    discharge_date: date | None
    case_status: str = "active"
    deceased: bool = False
    deceased_date: date | None = None
    opted_out: bool = False


@dataclass(frozen=True, slots=True)
class Response:
    id: str
    instrument: str
    completion_date: date
    status: str | None = "completed"


@dataclass(frozen=True, slots=True)
class TimepointPlan:
    timepoint: str
    due_date: date
    window_start: date
    window_end: date
    status: str
    next_attempt_on: date | None = None
    completed_response_id: str | None = None
    cancel_reason: str | None = None
    anchor: str = "surgery"


@dataclass
class PlanCounts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped_concurrent: int = 0
    by_status: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "skipped_concurrent": self.skipped_concurrent,
            "by_status": dict(sorted(self.by_status.items())),
        }


def anchor_date(tp: TimepointWindow, surgery: date, discharge: date | None) -> tuple[date, str]:
    """The date a time point counts from and its kind (``surgery``, ``discharge`` or
    ``surgery_fallback``); the same rule as case assembly's PROM placement."""
    return discharge_anchor(surgery, discharge) if tp.anchor == "discharge" else (surgery, "surgery")


def window(tp: TimepointWindow, surgery: date, discharge: date | None) -> tuple[date, date, date]:
    """Due date, window start, window end (inclusive), as calendar-day offsets."""
    a, _ = anchor_date(tp, surgery, discharge)
    return (
        a + timedelta(days=tp.due_days),
        a + timedelta(days=tp.window_start_days),
        a + timedelta(days=tp.window_end_days),
    )


def first_reminder_on(due: date, window_start: date, first_days_before: int) -> date:
    return max(due - timedelta(days=first_days_before), window_start)


def next_attempt_on(
    *,
    due: date,
    window_start: date,
    window_end: date,
    attempts: int,
    last_sent_day: date | None,
    first_days_before: int,
    every_days: int,
    max_attempts: int,
) -> date | None:
    """The day attempt ``attempts + 1`` may go out, or None when no attempt is left."""
    if attempts >= max_attempts:
        return None
    day = first_reminder_on(due, window_start, first_days_before) + timedelta(days=attempts * every_days)
    if last_sent_day is not None:
        # A late attempt (host down, daily cap) pushes the next one back: never two reminders
        # closer together than the configured interval.
        day = max(day, last_sent_day + timedelta(days=every_days))
    return day if day <= window_end else None


def completing_response(
    responses: Iterable[Response],
    instruments: tuple[str, ...],
    complete_when: str,
    window_start: date,
    window_end: date,
    today: date,
) -> str | None:
    """The id of the response that completes the time point, if any."""
    counting = sorted(
        (
            r
            for r in responses
            if r.status in COUNTING_RESPONSE_STATUSES
            and window_start <= r.completion_date <= min(window_end, today)
            and (not instruments or r.instrument in instruments)
        ),
        key=lambda r: (r.completion_date, r.id),
    )
    if not counting:
        return None
    if complete_when == "all" and instruments:
        seen: set[str] = set()
        for r in counting:
            seen.add(r.instrument)
            if seen >= set(instruments):
                return r.id
        return None
    return counting[0].id


def cancel_reason(facts: CaseFacts, window_end: date) -> str | None:
    """Why a time point whose window ends on ``window_end`` is cancelled, if it is.

    A death cancels only time points still open on the date of death; one whose window had
    already closed stays expired/missing. Without a date of death every open one is cancelled.
    """
    if facts.case_status != "active":
        return f"case_{facts.case_status}"
    if facts.deceased and (facts.deceased_date is None or facts.deceased_date <= window_end):
        return "deceased"
    if facts.opted_out:
        return "opted_out"
    return None


def plan_timepoint(
    name: str,
    tp: TimepointWindow,
    facts: CaseFacts,
    responses: Iterable[Response],
    *,
    attempts: int,
    last_sent_day: date | None,
    today: date,
    settings: Settings,
    staff_completed: tuple[str, date] | None = None,
) -> TimepointPlan:
    rs = settings.section(RemindersSettings)
    due, start, end = window(tp, facts.surgery_date, facts.discharge_date)
    _, anchor = anchor_date(tp, facts.surgery_date, facts.discharge_date)

    def plan(status: str, **rest: Any) -> TimepointPlan:
        # Built once with its status (``dataclasses.replace`` per time point cost more than
        # the planning itself).
        return TimepointPlan(name, due, start, end, status, anchor=anchor, **rest)

    instruments = rs.instruments.get(facts.module or "default", rs.instruments.get("default", ()))
    done = completing_response(responses, instruments, rs.complete_when, start, end, today)
    if done is not None:
        return plan("completed", completed_response_id=done)
    if staff_completed is not None:
        # Completed with a coordinator (by phone or on paper): no more reminders, whatever
        # the responses say; answers entered for it arrive as a response and win above.
        return plan("completed")
    reason = cancel_reason(facts, end)
    if reason is not None:
        return plan("cancelled", cancel_reason=reason)
    if name not in rs.remind:
        return plan("missing" if today > end else "open")
    if today > end:
        return plan("expired")
    nxt = next_attempt_on(
        due=due,
        window_start=start,
        window_end=end,
        attempts=attempts,
        last_sent_day=last_sent_day,
        first_days_before=rs.first_reminder_days_before,
        every_days=rs.repeat_every_days,
        max_attempts=rs.max_attempts,
    )
    return plan("sent" if last_sent_day else "scheduled", next_attempt_on=nxt)


def check_configuration(settings: Settings, instrument_ids: Iterable[str] | None = None) -> None:
    """Cross-section checks the settings models cannot make on their own."""
    unknown = sorted(set(settings.section(RemindersSettings).remind) - set(settings.proms.timepoints))
    if unknown:
        known = ", ".join(settings.proms.timepoints)
        raise PlanningError(
            f"reminders.remind names unknown time points {unknown} (proms.timepoints: {known})"
        )
    if instrument_ids is not None:
        ids = set(instrument_ids)
        for module, wanted in settings.section(RemindersSettings).instruments.items():
            missing = sorted(set(wanted) - ids)
            if missing:
                raise PlanningError(
                    f"reminders.instruments.{module} names unknown instruments {missing}"
                    f" (known: {', '.join(sorted(ids))})"
                )


def local_day(at: datetime | None, tz: ZoneInfo) -> date | None:
    if at is None:
        return None
    if at.tzinfo is None:  # stored timestamps are UTC; a driver may hand them back naive
        at = at.replace(tzinfo=UTC)
    return at.astimezone(tz).date()


def _chunked(ids: Collection[str] | None) -> Iterator[list[str] | None]:
    """``ids`` in slices a driver takes as bound parameters; one None (everything) for None."""
    if ids is None:
        yield None
        return
    ordered = sorted(ids)
    for start in range(0, len(ordered), 400):
        yield ordered[start : start + 400]


def _load_facts(
    conn: Connection, case_ids: Collection[str] | None = None
) -> tuple[list[CaseFacts], dict[str, tuple[str, str]]]:
    query = select(
        CASES.c.id,
        CASES.c.source,
        CASES.c.procedure_id,
        CASES.c.patient_id,
        CASES.c.module,
        CASES.c.surgery_date,
        CASES.c.discharge_date,
        CASES.c.status,
    ).order_by(CASES.c.id)
    cases: list[Any] = []
    for chunk in _chunked(case_ids):
        cases += conn.execute(query if chunk is None else query.where(CASES.c.id.in_(chunk))).all()
    cases.sort(key=lambda c: c.id)
    people = select(
        PATIENTS.c.source, PATIENTS.c.id, PATIENTS.c.deceased, PATIENTS.c.deceased_date, PATIENTS.c.opted_out
    )
    patients = {}
    for chunk in _chunked(None if case_ids is None else {c.patient_id for c in cases}):
        for r in conn.execute(people if chunk is None else people.where(PATIENTS.c.id.in_(chunk))):
            patients[(r.source, r.id)] = r
    facts: list[CaseFacts] = []
    owners: dict[str, tuple[str, str]] = {}
    for c in cases:
        p = patients.get((c.source, c.patient_id))
        facts.append(
            CaseFacts(
                case_id=c.id,
                module=c.module,
                surgery_date=c.surgery_date,
                discharge_date=c.discharge_date,
                case_status=c.status,
                deceased=bool(p and (p.deceased or p.deceased_date)),
                deceased_date=p.deceased_date if p else None,
                opted_out=bool(p and p.opted_out),
            )
        )
        owners[c.id] = (c.source, c.patient_id)
    return facts, owners


def _load_responses(
    conn: Connection, case_ids: Collection[str] | None = None
) -> dict[tuple[str, str], list[Response]]:
    out: dict[tuple[str, str], list[Response]] = defaultdict(list)
    query = select(
        PROM_RESPONSES.c.id,
        PROM_RESPONSES.c.case_id,
        PROM_RESPONSES.c.timepoint,
        PROM_RESPONSES.c.instrument,
        PROM_RESPONSES.c.completion_date,
        PROM_RESPONSES.c.status,
    ).where(PROM_RESPONSES.c.case_id.is_not(None))
    for chunk in _chunked(case_ids):
        for r in conn.execute(query if chunk is None else query.where(PROM_RESPONSES.c.case_id.in_(chunk))):
            out[(r.case_id, r.timepoint)].append(Response(r.id, r.instrument, r.completion_date, r.status))
    return out


def _load_reminders(conn: Connection, case_ids: Collection[str] | None = None) -> dict[tuple[str, str], Any]:
    """The reminder rows of these cases (every row for None), and any still open whose case is
    missing (only a hand-edited database has one)."""
    rows = {}
    for chunk in _chunked(case_ids):
        query = select(REMINDERS)
        if chunk is not None:
            query = query.where(REMINDERS.c.case_id.in_(chunk))
        rows.update({(r.case_id, r.timepoint): r for r in conn.execute(query)})
    if case_ids is not None:
        orphans = select(REMINDERS).where(
            REMINDERS.c.status.in_(ACTIVE), ~exists().where(CASES.c.id == REMINDERS.c.case_id)
        )
        rows.update({(r.case_id, r.timepoint): r for r in conn.execute(orphans)})
    return rows


def cases_to_replan(conn: Connection, settings: Settings, changed: Collection[str]) -> set[str]:
    """The cases whose reminder rows a plan can change after a run that changed the cases
    ``changed``: those; the cases with a time point still open (scheduled, sent or open:
    the date alone completes, expires or misses it, and a coordinator's completion or an
    opt-out closes it); and the active cases not planned for every configured time point."""
    names = list(settings.proms.timepoints)
    live = select(REMINDERS.c.case_id).where(REMINDERS.c.status.in_((*ACTIVE, "open"))).distinct()
    planned = (
        select(func.count())
        .select_from(REMINDERS)
        .where(REMINDERS.c.case_id == CASES.c.id, REMINDERS.c.timepoint.in_(names))
        .scalar_subquery()
    )
    unplanned = select(CASES.c.id).where(CASES.c.status == "active", planned < len(names))
    return set(changed) | set(conn.execute(live).scalars()) | set(conn.execute(unplanned).scalars())


def _case_chunks(conn: Connection, per_chunk: int) -> Iterator[list[str]]:
    """Every case id, ``per_chunk`` at a time (keyset over the primary key)."""
    return keyset_chunks(conn, select(CASES.c.id), CASES.c.id, per_chunk)


def plan_reminders(
    conn: Connection,
    settings: Settings,
    today: date,
    cases: Collection[str] | None = None,
    *,
    per_chunk: int = 5_000,
) -> PlanCounts:
    """Bring every case's reminder rows up to date as of ``today`` (a site-local date), or
    only those of ``cases`` (``cases_to_replan`` names the ones a run can have changed).

    ``per_chunk`` cases at a time (their facts, responses and reminder rows), so the memory it
    needs does not grow with the store: it runs after every import and re-process, when a
    backfill has changed every case."""
    check_configuration(settings)
    counts = PlanCounts()
    staff = staff_completions(conn)
    if cases is None:
        first = next(_case_chunks(conn, per_chunk + 1), [])
        if len(first) <= per_chunk:  # a store that fits in one chunk: in one pass, as ever
            _plan_cases(conn, settings, today, None, staff, counts)
            return counts
        chunks: Iterable[Collection[str]] = _case_chunks(conn, per_chunk)
    else:
        ordered = sorted(cases)
        chunks = (ordered[i : i + per_chunk] for i in range(0, len(ordered), per_chunk))
    for chunk in chunks:
        _plan_cases(conn, settings, today, chunk, staff, counts)
    return counts


def _plan_cases(
    conn: Connection,
    settings: Settings,
    today: date,
    cases: Collection[str] | None,
    staff: Mapping[tuple[str, str], tuple[str, date]],
    counts: PlanCounts,
) -> None:
    tz = settings.site.tz
    facts, _ = _load_facts(conn, cases)
    responses = _load_responses(conn, cases)
    existing = _load_reminders(conn, cases)
    known_cases = {f.case_id for f in facts}
    now = utcnow()
    inserts: list[dict[str, Any]] = []
    for f in facts:
        for name, tp in settings.proms.timepoints.items():
            row = existing.get((f.case_id, name))
            if row is None and f.case_status != "active":
                continue  # a case removed before it was ever planned needs no rows
            plan = plan_timepoint(
                name,
                tp,
                f,
                responses.get((f.case_id, name), []),
                attempts=row.attempts if row else 0,
                last_sent_day=local_day(row.last_sent_at, tz) if row else None,
                today=today,
                settings=settings,
                staff_completed=staff.get((f.case_id, name)),
            )
            counts.by_status[plan.status] = counts.by_status.get(plan.status, 0) + 1
            values = {k: getattr(plan, k) for k in _PLANNED_FIELDS}
            if row is not None:
                values["note"] = moved_note(row, plan, tz)
            if row is None:
                inserts.append(
                    {"case_id": f.case_id, "timepoint": name, **values, "created_at": now, "updated_at": now}
                )
            else:
                _update_if_changed(conn, row, values, now, counts)
    for (case_id, _name), row in existing.items():
        if case_id not in known_cases and row.status in ACTIVE:
            # Cases are never deleted; this only guards against hand-edited databases.
            _update_if_changed(
                conn,
                row,
                {
                    **{k: getattr(row, k) for k in _PLANNED_FIELDS},
                    "status": "cancelled",
                    "next_attempt_on": None,
                    "cancel_reason": "case_missing",
                },
                now,
                counts,
            )
    if inserts:
        _insert_new(conn, inserts)
        counts.created += len(inserts)


def moved_note(row: Any, plan: TimepointPlan, tz: ZoneInfo) -> str | None:
    """A note when the due date moved after attempts went out (e.g. the discharge arrived and
    replaced the surgery-date fallback), so an attempt dated before the new due date is
    explained; the note stays once written (the attempts it explains stay in history)."""
    if row.note or not row.attempts or row.due_date == plan.due_date:
        return row.note
    last = local_day(row.last_sent_at, tz)
    return (
        f"due date moved from {row.due_date.isoformat()} to {plan.due_date.isoformat()}"
        f" (anchor: {plan.anchor}) after {row.attempts} attempt(s) sent"
        + (f", the last on {last.isoformat()}" if last else "")
    )[:500]


def _update_if_changed(
    conn: Connection, row: Any, values: Mapping[str, Any], now: datetime, counts: PlanCounts
) -> None:
    if all(getattr(row, k) == v for k, v in values.items()):
        counts.unchanged += 1
        return
    if reminders.claim_reminder(conn, row.id, row.attempts, {**values, "updated_at": now}):
        counts.updated += 1
    else:
        counts.skipped_concurrent += 1


def _insert_new(conn: Connection, rows: list[dict[str, Any]]) -> None:
    reminders.insert_new_reminders(conn, rows)
