"""Patient merges (HL7 v2 ADT^A40 merge patient, ADT^A47 change identifier) in the store.

The surviving patient takes over everything registry rows hold of the merged one: its stays,
procedures, diagnoses and PROM responses, its cases (under their ids, so their reminders and
audit history follow) and so its reminders. The merged patient's row is kept, marked
``merged_into``, and rows mapped later for it (a late message, a re-import of old messages)
are filed under the survivor. Each merge is audited; what moved is also returned for a
review entry. Everything here names ids and counts only, never patient data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from registry_store import audit
from registry_store.db import upsert
from registry_store.tables import (
    AUDIT_LOG,
    CASES,
    CONDITIONS,
    ENCOUNTERS,
    PATIENTS,
    PROCEDURES,
    PROM_RESPONSES,
    REMINDERS,
)
from registry_store.timeutil import utcnow
from registry_types.issues import Issue

# Registry tables whose rows belong to a patient through ``patient_id``.
PATIENT_ROWS = {
    "encounters": ENCOUNTERS,
    "procedures": PROCEDURES,
    "conditions": CONDITIONS,
    "prom_responses": PROM_RESPONSES,
}
MERGED_ISSUE = "hl7.patient_merged"
MERGE_ACTION = "patient.merge"
# Who the audit log names for merges the hospital's ADT feed ordered.
AUDIT_ACTOR = "hl7v2"
# A chain A -> B -> C is followed this far (a loop A -> B -> A must not hang a batch).
MAX_CHAIN = 20


@dataclass
class MergeReport:
    source: str
    merged: str
    surviving: str
    moved: dict[str, int] = field(default_factory=dict)
    cases: list[str] = field(default_factory=list)
    reminders: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"patient_id": self.surviving, "moved": self.moved, "cases": self.cases,
                "reminders": self.reminders}

    def issue(self) -> Issue:
        """The review entry: which patient went where and what moved with it."""
        rows = ", ".join(f"{n} {table}" for table, n in self.moved.items() if n) or "no registry rows"
        cases = ", ".join(self.cases) or "none"
        return Issue(
            MERGED_ISSUE,
            f"patient {self.merged} merged into {self.surviving}: moved {rows}; cases {cases}; "
            f"{self.reminders} reminder(s) moved with their cases",
            field="MRG-1",
            rule="hl7v2:MRG",
            severity="warning",
        )


def merge_patient(
    conn: Connection, source: str, merged: str, surviving: str, *, staging_id: int | None = None
) -> MergeReport:
    """Move ``merged``'s rows, cases and reminders to ``surviving`` (one source), mark and
    audit it, in the caller's transaction. Merging a patient into itself changes nothing."""
    surviving = resolve(conn, source, [surviving]).get(surviving, surviving)
    report = MergeReport(source, merged, surviving)
    if merged == surviving:
        return report
    for name, table in PATIENT_ROWS.items():
        result = conn.execute(
            update(table)
            .where(table.c.source == source, table.c.patient_id == merged)
            .values(patient_id=surviving)
        )
        report.moved[name] = int(result.rowcount or 0)
    report.cases = sorted(
        conn.execute(
            select(CASES.c.id).where(CASES.c.source == source, CASES.c.patient_id == merged)
        ).scalars()
    )
    if report.cases:
        conn.execute(
            update(CASES)
            .where(CASES.c.id.in_(report.cases))
            .values(patient_id=surviving, updated_at=utcnow())
        )
        report.reminders = int(
            conn.execute(
                select(func.count()).select_from(REMINDERS).where(REMINDERS.c.case_id.in_(report.cases))
            ).scalar_one()
        )
    marked = conn.execute(
        select(PATIENTS.c.merged_into).where(PATIENTS.c.source == source, PATIENTS.c.id == merged)
    ).scalar()
    if marked == surviving and not report.cases and not any(report.moved.values()):
        # The same A40 converted again (reprocess): done and audited already; its review
        # entry keeps listing what moved then.
        return _audited(conn, report)
    upsert(conn, PATIENTS, [{"source": source, "id": merged, "merged_into": surviving}],
           keys=["source", "id"])
    # Patients merged into the merged one earlier now point at the survivor too.
    conn.execute(
        update(PATIENTS)
        .where(PATIENTS.c.source == source, PATIENTS.c.merged_into == merged)
        .values(merged_into=surviving)
    )
    audit.record(
        conn,
        username=AUDIT_ACTOR,
        action=MERGE_ACTION,
        target=_target(source, merged),
        before={"patient_id": merged, "staging_id": staging_id},
        after=report.as_dict(),
    )
    return report


def _audited(conn: Connection, report: MergeReport) -> MergeReport:
    """``report`` as the audit log recorded the merge when it was done."""
    after = conn.execute(
        select(AUDIT_LOG.c.after)
        .where(
            AUDIT_LOG.c.action == MERGE_ACTION, AUDIT_LOG.c.target == _target(report.source, report.merged)
        )
        .order_by(AUDIT_LOG.c.id.desc())
        .limit(1)
    ).scalar()
    if isinstance(after, dict):
        report.moved = dict(after.get("moved") or {})
        report.cases = list(after.get("cases") or [])
        report.reminders = int(after.get("reminders") or 0)
    return report


def _target(source: str, merged: str) -> str:
    return f"patient {source}:{merged}"[:300]


def resolve(conn: Connection, source: str, patient_ids: Iterable[str]) -> dict[str, str]:
    """For each of ``patient_ids`` that was merged: the patient it lives on as."""
    current = {p: p for p in patient_ids if p}
    for _ in range(MAX_CHAIN):
        heads = sorted(set(current.values()))
        found = {
            r.id: r.merged_into
            for r in conn.execute(
                select(PATIENTS.c.id, PATIENTS.c.merged_into).where(
                    PATIENTS.c.source == source,
                    PATIENTS.c.id.in_(heads),
                    PATIENTS.c.merged_into.is_not(None),
                )
            )
        }
        if not found:
            break
        current = {start: found.get(head, head) for start, head in current.items()}
    return {start: head for start, head in current.items() if head != start}


def file_under_survivors(conn: Connection, source: str, rows: list[dict[str, Any]]) -> set[str]:
    """Rows about to be written for merged patients go to the surviving patient instead
    (a message for the old identifier that arrives, or is re-imported, after the merge).
    Returns the surviving patients so their cases are assembled."""
    merged = resolve(conn, source, {str(r["patient_id"]) for r in rows if r.get("patient_id")})
    for row in rows:
        target = merged.get(str(row.get("patient_id") or ""))
        if target is not None:
            row["patient_id"] = target
    return set(merged.values())
