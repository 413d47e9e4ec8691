"""Case assembly: from mapped procedures, encounters and diagnoses to registry cases.

A case is one spine surgery: the procedures of one patient on one day in one stay, anchored
by the index procedure with the highest rank (so 22633 + 63047 + 22842 is one PLIF/TLIF case,
instrumented). Hospitals send a surgery either as one Procedure with several codings or as one
Procedure per billed code; grouping makes both give the same case. PROM responses are then
placed on a case and time point by their completion date.

A case id is ``source:anchor procedure id`` when the case is first made, and then stays: if a
higher-ranked code of the same surgery arrives later, the case is re-anchored under its old id,
because reminders and audit history point at it.

Only surgeries that happened anchor a case: a Procedure in ``preparation`` (planned; the v2
helper emits it for A05/A14, class P and future PR1) or dated after the day assembly runs is
left out until it is performed. A case no longer produced is kept (reminders point at it):
``withdrawn`` with a reason when its procedure was deleted at the source or marked
entered-in-error / not-done, or withdrawn by hand (``cases withdraw``); otherwise
``removed`` (e.g. the procedure moved to another day, which makes a new case).

Time points anchored on the discharge fall back to the surgery date when the stay has no
discharge date or one before the surgery; such cases carry a warning for review.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import and_, select
from sqlalchemy.engine import Connection, Row

from mappings.codemaps import CodeMap, display_code
from registry_store import cases as case_store
from registry_store.errors import CASE_SCOPE, replace_errors
from registry_store.tables import (
    CASES,
    CONDITIONS,
    ENCOUNTERS,
    MAPPING_ERRORS,
    PATIENTS,
    PROCEDURES,
    PROM_RESPONSES,
    STAGING,
)
from registry_store.timeutil import utcnow
from registry_types.issues import Issue

# Procedure statuses of surgeries that have not happened (yet): never a case anchor.
PLANNED_STATUSES = ("preparation",)
DELETED_AT_SOURCE = "deleted at source"
MANUAL_PREFIX = "withdrawn by "


def case_id(source: str, procedure_id: str) -> str:
    return f"{source}:{procedure_id}"


def discharge_anchor(surgery: date, discharge: date | None) -> tuple[date, str]:
    """The date discharge-anchored time points count from, and which it is.

    A missing discharge, or one before the surgery (a data error), falls back to the surgery
    date, visibly (``surgery_fallback``), rather than putting the time point before surgery.
    """
    if discharge is not None and discharge >= surgery:
        return discharge, "discharge"
    return surgery, "surgery_fallback"


def _anchor_issue(enc: Row[Any] | None, surgery: date) -> Issue | None:
    """A warning for a case whose discharge-anchored time points fall back to the surgery."""
    discharge = enc.discharge_date if enc is not None else None
    if discharge is not None and discharge >= surgery:
        return None
    if discharge is not None:
        return Issue(
            "case.discharge_before_surgery",
            "the stay's discharge date is before the surgery date; time points anchored on"
            " the discharge count from the surgery date instead",
            field="discharge_date",
            rule="discharge_anchor",
            severity="warning",
        )
    return Issue(
        "case.no_discharge",
        ("the stay has no discharge date" if enc is not None else "the surgery has no stay (encounter)")
        + "; time points anchored on the discharge count from the surgery date until it arrives",
        field="discharge_date",
        rule="discharge_anchor",
        severity="warning",
    )


def _chunks(items: list[Any], size: int = 400) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _by_patient(
    conn: Connection, table: Any, source: str, patients: list[str], columns: Iterable[Any] | None = None
) -> dict[str, list[Row[Any]]]:
    """The rows of ``table`` of these patients of ``source``, by patient; only ``columns``
    when given (each column read costs: dates are parsed, JSON decoded)."""
    out: dict[str, list[Row[Any]]] = defaultdict(list)
    wanted = select(table) if columns is None else select(*columns)
    for chunk in _chunks(patients):
        for row in conn.execute(wanted.where(and_(table.c.source == source, table.c.patient_id.in_(chunk)))):
            out[row.patient_id].append(row)
    return out


# What PROM placement reads of cases and responses (not their codes, diagnoses, scores or
# answers: decoding those JSON columns was most of its cost).
_PLACEMENT_CASE_COLUMNS = (
    CASES.c.id,
    CASES.c.patient_id,
    CASES.c.status,
    CASES.c.surgery_date,
    CASES.c.discharge_date,
)
_PLACEMENT_RESPONSE_COLUMNS = (
    PROM_RESPONSES.c.source,
    PROM_RESPONSES.c.id,
    PROM_RESPONSES.c.patient_id,
    PROM_RESPONSES.c.completion_date,
    PROM_RESPONSES.c.case_id,
    PROM_RESPONSES.c.timepoint,
)


def assemble_cases(
    conn: Connection,
    source: str,
    patient_ids: Iterable[str],
    diagnoses_map: CodeMap,
    timepoints: Mapping[str, Any],
    today: date | None = None,
) -> int:
    """Rebuild the cases of these patients as of ``today`` (the site-local date assembly runs;
    default: the host's today); returns how many cases are active for them."""
    patients = sorted(set(patient_ids))
    if not patients:
        return 0
    today = today or date.today()
    procs = _by_patient(conn, PROCEDURES, source, patients)
    conds = _by_patient(conn, CONDITIONS, source, patients)
    encounter_ids = sorted({p.encounter_id for rows in procs.values() for p in rows if p.encounter_id})
    encounters: dict[str, Row[Any]] = {}
    for chunk in _chunks(encounter_ids):
        query = select(ENCOUNTERS).where(ENCOUNTERS.c.source == source, ENCOUNTERS.c.id.in_(chunk))
        for enc_row in conn.execute(query):
            encounters[enc_row.id] = enc_row
    existing: dict[str, Any] = {}  # case id -> its row
    # The active case of each surgery group (patient, encounter or "", surgery date).
    active: dict[tuple[str, str, date], str] = {}
    # Surgeries a coordinator withdrew by hand: not made into a case again.
    held: set[tuple[str, str, date]] = set()
    for chunk in _chunks(patients):
        for r in conn.execute(
            select(
                CASES.c.id,
                CASES.c.status,
                CASES.c.status_reason,
                CASES.c.procedure_id,
                CASES.c.patient_id,
                CASES.c.encounter_id,
                CASES.c.surgery_date,
            ).where(CASES.c.source == source, CASES.c.patient_id.in_(chunk))
        ):
            existing[r.id] = r
            group = (r.patient_id, r.encounter_id or "", r.surgery_date)
            if r.status == "active":
                active.setdefault(group, r.id)
            elif (r.status_reason or "").startswith(MANUAL_PREFIX):
                held.add(group)
    now = utcnow()
    rows: list[dict[str, Any]] = []
    # staging id → (resource type, resource id, issue) of the records case assembly flags.
    flagged: dict[int, tuple[str, str, Issue]] = {}
    for patient in patients:
        groups: dict[tuple[str, date], list[Row[Any]]] = defaultdict(list)
        for proc in procs.get(patient, []):
            if proc.status in PLANNED_STATUSES or proc.surgery_date > today:
                continue  # not performed (yet): no case, no orphan error
            groups[(proc.encounter_id or "", proc.surgery_date)].append(proc)
        by_id = {c.id: c for c in conds.get(patient, [])}
        for (enc_id, surgery_date), members in groups.items():
            if (patient, enc_id, surgery_date) in held:
                continue
            index = [p for p in members if p.role == "index"]
            if not index:
                codes = sorted({c.rsplit("|", 1)[-1] for p in members for c in p.codes})
                issue = Issue(
                    "case.no_index_procedure",
                    f"surgery has only add-on, instrumentation or revision codes ({', '.join(codes)});"
                    " no procedure that can anchor a case was received for the same day and stay",
                    field="code",
                    value=", ".join(codes)[:200],
                    rule="index_procedure",
                )
                for p in members:
                    if p.staging_id is not None:
                        flagged[p.staging_id] = ("Procedure", p.id, issue)
                continue
            index.sort(key=lambda p: (-p.rank, p.id))
            anchor = index[0]
            enc: Row[Any] | None = encounters.get(enc_id) if enc_id else None
            anchor_issue = _anchor_issue(enc, surgery_date)
            if anchor_issue is not None and anchor.staging_id is not None:
                flagged[anchor.staging_id] = ("Procedure", anchor.id, anchor_issue)
            diag_cats, diag_codes, uncoded = _diagnoses(members, enc_id, by_id, diagnoses_map)
            for cond in uncoded:
                if cond.staging_id is not None:
                    flagged[cond.staging_id] = ("Condition", cond.id, _UNCODED_DIAGNOSIS)
            rows.append(
                {
                    "id": active.get((patient, enc_id, surgery_date)),
                    "source": source,
                    "procedure_id": anchor.id,
                    "patient_id": patient,
                    "encounter_id": enc_id or None,
                    "module": anchor.module,
                    "category": anchor.category,
                    "procedure_ids": sorted(p.id for p in members),
                    "codes": sorted({c for p in members for c in p.codes}),
                    "surgery_date": surgery_date,
                    "admission_date": enc.admit_date if enc else None,
                    "discharge_date": enc.discharge_date if enc else None,
                    "diagnoses": diag_cats,
                    "diagnosis_codes": diag_codes,
                    "revision": any(p.revision for p in members),
                    "instrumented": any(p.instrumented for p in members),
                    "status": "active",
                    "status_reason": None,
                    "updated_at": now,
                }
            )
    _assign_ids(source, rows)
    case_store.upsert_cases(conn, rows)
    produced = {r["id"] for r in rows}
    gone = [c for cid, c in sorted(existing.items()) if c.status == "active" and cid not in produced]
    # Kept, not deleted: reminders and audit history point at cases.
    for case, (status, reason) in zip(gone, _why_gone(conn, source, gone), strict=True):
        case_store.set_case_status(conn, case.id, status, reason, at=now)
    _assign_proms(conn, source, patients, timepoints, now, produced | {c.id for c in gone})
    considered = [("Procedure", p.id) for rows_ in procs.values() for p in rows_]
    considered += [("Condition", c.id) for rows_ in conds.values() for c in rows_]
    _report_case_issues(conn, source, considered, flagged)
    return len(rows)


def case_ids_of(conn: Connection, source: str, patients: Iterable[str]) -> list[str]:
    """The ids of every case (any status) of these patients of ``source``."""
    ids: list[str] = []
    for chunk in _chunks(sorted(set(patients))):
        ids += conn.execute(
            select(CASES.c.id).where(CASES.c.source == source, CASES.c.patient_id.in_(chunk))
        ).scalars()
    return ids


def _why_gone(conn: Connection, source: str, gone: list[Row[Any]]) -> list[tuple[str, str | None]]:
    """Status and reason for cases no longer produced, from their anchor's staged record."""
    staged: dict[str, Any] = {}
    for chunk in _chunks(sorted({c.procedure_id for c in gone})):
        for r in conn.execute(
            select(STAGING.c.resource_id, STAGING.c.status, STAGING.c.raw).where(
                STAGING.c.source == source,
                STAGING.c.resource_type == "Procedure",
                STAGING.c.resource_id.in_(chunk),
            )
        ):
            staged[r.resource_id] = r
    out: list[tuple[str, str | None]] = []
    for case in gone:
        rec = staged.get(case.procedure_id)
        if rec is not None and rec.status == "deleted":
            out.append(("withdrawn", DELETED_AT_SOURCE))
        elif rec is not None and rec.status == "excluded":
            out.append(("withdrawn", f"procedure {_procedure_status(rec.raw)}"))
        else:
            out.append(("removed", None))
    return out


def _procedure_status(raw: bytes) -> str:
    """The status of a staged Procedure (an excluded one: entered-in-error or not-done)."""
    try:
        status = orjson.loads(raw).get("status")
    except (orjson.JSONDecodeError, AttributeError):
        status = None
    return str(status)[:40] if status else "excluded"


def withdraw_case(
    conn: Connection, case: str, *, by: str, reason: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Withdraw a case by hand (the surgery is not a registry case); the caller audits it.

    Returns the case's status and reason before and after. Case assembly leaves a surgery
    withdrawn this way alone, even when its procedures are sent again.
    """
    row = conn.execute(select(CASES.c.status, CASES.c.status_reason).where(CASES.c.id == case)).first()
    if row is None:
        raise LookupError(f"no case with id {case}")
    after = {"status": "withdrawn", "status_reason": f"{MANUAL_PREFIX}{by}: {reason}"[:500]}
    case_store.set_case_status(conn, case, after["status"], after["status_reason"], at=utcnow())
    return {"status": row.status, "status_reason": row.status_reason}, after


def _assign_ids(source: str, rows: list[dict[str, Any]]) -> None:
    """Give new cases (``id`` None) the id of their anchor, unless a kept case holds it.

    A kept id can be another anchor's (a procedure moved to another day leaves its old
    surgery's case behind); the new case then gets the surgery date in its id as well.
    """
    taken = {r["id"] for r in rows if r["id"] is not None}
    for row in rows:
        if row["id"] is None:
            cid = case_id(source, row["procedure_id"])
            if cid in taken:
                cid = f"{cid}@{row['surgery_date'].isoformat()}"
            row["id"] = cid
            taken.add(cid)


def _report_case_issues(
    conn: Connection,
    source: str,
    considered: list[tuple[str, str]],
    flagged: Mapping[int, tuple[str, str, Issue]],
) -> None:
    """Open case-assembly errors and warnings (procedures that anchor nothing, no usable
    discharge, diagnoses that cannot be classified) on the records they concern, and resolve
    the open ones of the ``considered`` (resource type, id) records that are no longer flagged."""
    had_errors: dict[int, tuple[str, str]] = {}
    by_type: dict[str, list[str]] = defaultdict(list)
    for resource_type, resource_id in considered:
        by_type[resource_type].append(resource_id)
    for resource_type, ids in sorted(by_type.items()):
        for chunk in _chunks(ids):
            for r in conn.execute(
                select(MAPPING_ERRORS.c.staging_id, MAPPING_ERRORS.c.resource_id).where(
                    MAPPING_ERRORS.c.mapping == CASE_SCOPE,
                    MAPPING_ERRORS.c.status == "open",
                    MAPPING_ERRORS.c.source == source,
                    MAPPING_ERRORS.c.resource_type == resource_type,
                    MAPPING_ERRORS.c.resource_id.in_(chunk),
                )
            ):
                had_errors[r.staging_id] = (resource_type, r.resource_id)
    for staging_id in sorted(set(flagged) | set(had_errors)):
        if staging_id in flagged:
            resource_type, resource_id, issue = flagged[staging_id]
            issues = [issue]
        else:
            (resource_type, resource_id), issues = had_errors[staging_id], []
        replace_errors(
            conn,
            staging_id=staging_id,
            source=source,
            resource_type=resource_type,
            resource_id=resource_id,
            mapping=CASE_SCOPE,
            issues=issues,
        )


# A diagnosis of a surgical stay given only in words: the registry needs it classified.
_UNCODED_DIAGNOSIS = Issue(
    "case.uncoded_diagnosis",
    "a diagnosis of a surgical stay has text but no code, so it cannot be classified;"
    " have it coded (ICD-10-CM) in the hospital's system and send it again",
    field="code",
    rule="diagnosis_code",
)
UNCODED = "uncoded"  # the category the condition mapping gives a diagnosis without a code


def _diagnoses(
    members: list[Row[Any]], enc_id: str, conditions: Mapping[str, Row[Any]], dmap: CodeMap
) -> tuple[list[str], list[str], list[Row[Any]]]:
    """Diagnoses of a surgery: its reasonReference Conditions, Conditions of the same stay,
    and ICD-10-CM codes given inline in reasonCode; and the stay's Conditions that have only
    text (they cannot be classified)."""
    cats: dict[str, None] = {}
    codes: dict[str, None] = {}
    uncoded: list[Row[Any]] = []
    referenced = {cid for p in members for cid in p.reason_condition_ids}
    for cond in conditions.values():
        if cond.id in referenced or (enc_id and cond.encounter_id == enc_id):
            if cond.category == UNCODED:
                uncoded.append(cond)
                continue
            cats[cond.category] = None
            codes[cond.code] = None
    for proc in members:
        for token in proc.reason_codes:
            system_uri, _, code = token.partition("|")
            system = dmap.system_name(system_uri)
            entry = dmap.lookup(system, code) if system else None
            if entry is not None and system is not None:
                cats[str(entry.values["category"])] = None
                codes[display_code(system, code)] = None
    return sorted(cats), sorted(codes), uncoded


def _linked(conn: Connection, source: str, patients: list[str]) -> dict[tuple[str, str], str]:
    """Every (source, patient id) that is the same person as these patients → a person key.

    Feeds identify one person differently (a FHIR id here, a v2 MRN hash there), so the
    registry pseudonym (keyed hash of site + MRN) links them; without an MRN a patient is
    only themself.
    """
    person: dict[tuple[str, str], str] = {(source, p): f"{source}\x1f{p}" for p in patients}
    pseudonyms: dict[str, str] = {}
    for chunk in _chunks(patients):
        for row in conn.execute(
            select(PATIENTS.c.id, PATIENTS.c.pseudonym).where(
                PATIENTS.c.source == source, PATIENTS.c.id.in_(chunk), PATIENTS.c.pseudonym.is_not(None)
            )
        ):
            pseudonyms[row.pseudonym] = row.id
            person[(source, row.id)] = row.pseudonym
    keys = sorted(pseudonyms)
    for chunk in _chunks(keys):
        for same in conn.execute(
            select(PATIENTS.c.source, PATIENTS.c.id, PATIENTS.c.pseudonym).where(
                PATIENTS.c.pseudonym.in_(chunk)
            )
        ):
            person[(same.source, same.id)] = same.pseudonym
    return person


def _assign_proms(
    conn: Connection,
    source: str,
    patients: list[str],
    timepoints: Mapping[str, Any],
    now: datetime,
    stamped: set[str],
) -> None:
    """Place each response on the case and time point whose window holds its date.

    Responses and cases of the same person from any feed are considered (PROMs often come
    from a different system than the surgery). Where windows of two cases overlap, the
    response goes to the time point whose due date is nearest, as a coordinator would.
    """
    person = _linked(conn, source, patients)
    by_source: dict[str, list[str]] = defaultdict(list)
    for src, pid in person:
        by_source[src].append(pid)
    cases: dict[str, list[Row[Any]]] = defaultdict(list)
    responses: list[Row[Any]] = []
    for src, pids in by_source.items():
        for rows in _by_patient(conn, CASES, src, pids, _PLACEMENT_CASE_COLUMNS).values():
            for case in rows:
                if case.status == "active":
                    cases[person[(src, case.patient_id)]].append(case)
        for rows in _by_patient(conn, PROM_RESPONSES, src, pids, _PLACEMENT_RESPONSE_COLUMNS).values():
            responses.extend(rows)
    # Each case's time point windows as absolute dates, worked out once per case rather than
    # once per response: (window start, window end, due date, case id, time point), in the
    # order the cases and time points were considered (the first nearest wins a tie).
    windows: dict[str, list[tuple[date, date, date, str, str]]] = {}
    for key, person_cases in cases.items():
        spans = windows[key] = []
        for case in person_cases:
            for name, tp in timepoints.items():
                anchor = case.surgery_date
                if tp.anchor == "discharge":
                    anchor, _ = discharge_anchor(case.surgery_date, case.discharge_date)
                spans.append(
                    (
                        anchor + timedelta(days=tp.window_start_days),
                        anchor + timedelta(days=tp.window_end_days),
                        anchor + timedelta(days=tp.due_days),
                        case.id,
                        name,
                    )
                )
    placements: list[tuple[str, str, str | None, str | None]] = []
    moved: set[str] = set()
    for resp in responses:
        best: tuple[int, str, str] | None = None
        done = resp.completion_date
        for start, end, due, cid, name in windows.get(person[(resp.source, resp.patient_id)], ()):
            if start <= done <= end:
                distance = abs((done - due).days)
                if best is None or distance < best[0]:
                    best = (distance, cid, name)
        new_case, new_tp = (best[1], best[2]) if best else (None, None)
        if (resp.case_id, resp.timepoint) != (new_case, new_tp):
            placements.append((resp.source, resp.id, new_case, new_tp))
            moved.update(c for c in (resp.case_id, new_case) if c is not None)
    case_store.file_prom_responses(conn, placements)
    # ``stamped``: the cases just written (``updated_at`` now). A linked patient's case in
    # another feed was not, yet its responses changed.
    case_store.touch_cases(conn, sorted(moved - stamped), at=now)
