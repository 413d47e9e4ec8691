"""Case assembly: from mapped procedures, encounters and diagnoses to registry cases.

A case is one spine surgery: the procedures of one patient on one day in one stay, anchored
by the index procedure with the highest rank (so 22633 + 63047 + 22842 is one PLIF/TLIF case,
instrumented). Hospitals send a surgery either as one Procedure with several codings or as one
Procedure per billed code; grouping makes both give the same case. PROM responses are then
placed on a case and time point by their completion date.

A case id is ``source:anchor procedure id`` when the case is first made, and then stays: if a
higher-ranked code of the same surgery arrives later, the case is re-anchored under its old id,
because reminders and audit history point at it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.engine import Connection, Row

from mappings.codemaps import CodeMap, display_code
from registry_store.db import upsert
from registry_store.errors import CASE_SCOPE, ERRORS, Issue, replace_errors
from registry_store.models import Case, Condition, Encounter, Patient, Procedure, PromResponse
from registry_store.timeutil import utcnow

CASES = Case.__table__  # type: ignore[attr-defined]
PROCS = Procedure.__table__  # type: ignore[attr-defined]
CONDS = Condition.__table__  # type: ignore[attr-defined]
ENCS = Encounter.__table__  # type: ignore[attr-defined]
PROMS = PromResponse.__table__  # type: ignore[attr-defined]
PATIENTS = Patient.__table__  # type: ignore[attr-defined]


def case_id(source: str, procedure_id: str) -> str:
    return f"{source}:{procedure_id}"


def _chunks(items: list[Any], size: int = 400) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _by_patient(conn: Connection, table: Any, source: str, patients: list[str]) -> dict[str, list[Row[Any]]]:
    out: dict[str, list[Row[Any]]] = defaultdict(list)
    for chunk in _chunks(patients):
        for row in conn.execute(
            select(table).where(and_(table.c.source == source, table.c.patient_id.in_(chunk)))
        ):
            out[row.patient_id].append(row)
    return out


def assemble_cases(
    conn: Connection,
    source: str,
    patient_ids: Iterable[str],
    diagnoses_map: CodeMap,
    timepoints: Mapping[str, Any],
) -> int:
    """Rebuild the cases of these patients; returns how many cases are active for them."""
    patients = sorted(set(patient_ids))
    if not patients:
        return 0
    procs = _by_patient(conn, PROCS, source, patients)
    conds = _by_patient(conn, CONDS, source, patients)
    encounter_ids = sorted({p.encounter_id for rows in procs.values() for p in rows if p.encounter_id})
    encounters: dict[str, Row[Any]] = {}
    for chunk in _chunks(encounter_ids):
        for enc_row in conn.execute(select(ENCS).where(ENCS.c.source == source, ENCS.c.id.in_(chunk))):
            encounters[enc_row.id] = enc_row
    existing: dict[str, str] = {}
    # The active case of each surgery group (patient, encounter or "", surgery date).
    active: dict[tuple[str, str, date], str] = {}
    for chunk in _chunks(patients):
        for r in conn.execute(
            select(
                CASES.c.id, CASES.c.status, CASES.c.patient_id, CASES.c.encounter_id, CASES.c.surgery_date
            ).where(CASES.c.source == source, CASES.c.patient_id.in_(chunk))
        ):
            existing[r.id] = r.status
            if r.status == "active":
                active.setdefault((r.patient_id, r.encounter_id or "", r.surgery_date), r.id)
    now = utcnow()
    rows: list[dict[str, Any]] = []
    orphans: dict[int, tuple[str, Issue]] = {}
    for patient in patients:
        groups: dict[tuple[str, date], list[Row[Any]]] = defaultdict(list)
        for proc in procs.get(patient, []):
            groups[(proc.encounter_id or "", proc.surgery_date)].append(proc)
        by_id = {c.id: c for c in conds.get(patient, [])}
        for (enc_id, surgery_date), members in groups.items():
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
                        orphans[p.staging_id] = (p.id, issue)
                continue
            index.sort(key=lambda p: (-p.rank, p.id))
            anchor = index[0]
            enc: Row[Any] | None = encounters.get(enc_id) if enc_id else None
            diag_cats, diag_codes = _diagnoses(members, enc_id, by_id, diagnoses_map)
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
                    "updated_at": now,
                }
            )
    _assign_ids(source, rows)
    upsert(conn, CASES, rows, keys=["id"])
    produced = {r["id"] for r in rows}
    gone = sorted(cid for cid, status in existing.items() if status == "active" and cid not in produced)
    if gone:
        # Kept, not deleted: reminders and audit history point at cases.
        conn.execute(update(CASES).where(CASES.c.id.in_(gone)).values(status="removed", updated_at=now))
    _assign_proms(conn, source, patients, timepoints)
    _report_orphans(conn, source, [p for rows_ in procs.values() for p in rows_], orphans)
    return len(rows)


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


def _report_orphans(
    conn: Connection, source: str, procs: list[Row[Any]], orphans: Mapping[int, tuple[str, Issue]]
) -> None:
    """Open case-assembly errors for procedures that anchor nothing; resolve the rest."""
    had_errors: dict[int, str] = {}
    ids = [p.id for p in procs]
    for chunk in _chunks(ids):
        for r in conn.execute(
            select(ERRORS.c.staging_id, ERRORS.c.resource_id).where(
                ERRORS.c.mapping == CASE_SCOPE,
                ERRORS.c.status == "open",
                ERRORS.c.source == source,
                ERRORS.c.resource_type == "Procedure",
                ERRORS.c.resource_id.in_(chunk),
            )
        ):
            had_errors[r.staging_id] = r.resource_id
    for staging_id in sorted(set(orphans) | set(had_errors)):
        resource_id, issue = orphans.get(staging_id, (had_errors.get(staging_id, ""), None))
        replace_errors(
            conn,
            staging_id=staging_id,
            source=source,
            resource_type="Procedure",
            resource_id=resource_id,
            mapping=CASE_SCOPE,
            issues=[issue] if issue else [],
        )


def _diagnoses(
    members: list[Row[Any]], enc_id: str, conditions: Mapping[str, Row[Any]], dmap: CodeMap
) -> tuple[list[str], list[str]]:
    """Diagnoses of a surgery: its reasonReference Conditions, Conditions of the same stay,
    and ICD-10-CM codes given inline in reasonCode."""
    cats: dict[str, None] = {}
    codes: dict[str, None] = {}
    referenced = {cid for p in members for cid in p.reason_condition_ids}
    for cond in conditions.values():
        if cond.id in referenced or (enc_id and cond.encounter_id == enc_id):
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
    return sorted(cats), sorted(codes)


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
        for row in conn.execute(
            select(PATIENTS.c.source, PATIENTS.c.id, PATIENTS.c.pseudonym).where(
                PATIENTS.c.pseudonym.in_(chunk)
            )
        ):
            person[(row.source, row.id)] = row.pseudonym
    return person


def _assign_proms(conn: Connection, source: str, patients: list[str], timepoints: Mapping[str, Any]) -> None:
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
        for rows in _by_patient(conn, CASES, src, pids).values():
            for case in rows:
                if case.status == "active":
                    cases[person[(src, case.patient_id)]].append(case)
        for rows in _by_patient(conn, PROMS, src, pids).values():
            responses.extend(rows)
    for resp in responses:
        best: tuple[int, str, str] | None = None
        for case in cases.get(person[(resp.source, resp.patient_id)], []):
            for name, tp in timepoints.items():
                anchor = case.surgery_date
                if tp.anchor == "discharge" and case.discharge_date is not None:
                    anchor = case.discharge_date
                offset = (resp.completion_date - anchor).days
                if tp.window_start_days <= offset <= tp.window_end_days:
                    distance = abs(offset - tp.due_days)
                    if best is None or distance < best[0]:
                        best = (distance, case.id, name)
        new_case, new_tp = (best[1], best[2]) if best else (None, None)
        if (resp.case_id, resp.timepoint) != (new_case, new_tp):
            conn.execute(
                update(PROMS)
                .where(PROMS.c.source == resp.source, PROMS.c.id == resp.id)
                .values(case_id=new_case, timepoint=new_tp)
            )
