"""One staged record drilled down: its raw resource beside what the mapping made of it (the
registry rows carrying its ``staging_id``), its errors, and links to the patient's cases and
the patient's other open errors. Reads only."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from registry_store.tables import CASES, MAPPING_ERRORS, MAPPING_TARGETS, STAGING

# Columns of mapped rows that hold patient data: masked for the roles that see records masked.
PATIENT_DATA = {"mrn", "phone", "email", "birth_date", "deceased_date", "address", "postal_code", "pseudonym"}
_SKIPPED = {"staging_id", "updated_at", "created_at"}


def _patient_data(column: str) -> bool:
    return column in PATIENT_DATA or "name" in column


def _subject(raw: bytes | None) -> str | None:
    """The Patient id a FHIR record refers to (``subject``/``patient``), for a record that
    did not map: a reference is an id, not patient data."""
    try:
        resource = json.loads(raw or b"")
    except ValueError:
        return None
    if not isinstance(resource, dict):
        return None
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and str(ref.get("reference", "")).startswith("Patient/"):
            return str(ref["reference"]).removeprefix("Patient/")[:256] or None
    return None


def record_detail(conn: Connection, staging_id: int, masked: bool) -> dict[str, Any] | None:
    staged = conn.execute(select(STAGING).where(STAGING.c.id == staging_id)).first()
    if staged is None:
        return None
    mapped: list[dict[str, Any]] = []
    patient_id: str | None = staged.resource_id if staged.resource_type == "Patient" else None
    for target, table in MAPPING_TARGETS.items():
        for row in conn.execute(select(table).where(table.c.staging_id == staging_id)):
            values = dict(row._mapping)
            patient_id = patient_id or values.get("patient_id")
            shown = {
                k: ("•••" if masked and _patient_data(k) and v not in (None, "") else v)
                for k, v in values.items()
                if k not in _SKIPPED
            }
            mapped.append({"target": target, "values": shown})
    patient_id = patient_id or _subject(staged.raw)
    errors = [
        dict(r._mapping)
        for r in conn.execute(
            select(
                MAPPING_ERRORS.c.cause_id,
                MAPPING_ERRORS.c.code,
                MAPPING_ERRORS.c.field,
                MAPPING_ERRORS.c.status,
                MAPPING_ERRORS.c.message,
            ).where(MAPPING_ERRORS.c.staging_id == staging_id)
        )
    ]
    cases: list[dict[str, Any]] = []
    other_errors: list[dict[str, Any]] = []
    if patient_id:
        cases = [
            dict(r._mapping)
            for r in conn.execute(
                select(CASES.c.id, CASES.c.category, CASES.c.surgery_date, CASES.c.status).where(
                    CASES.c.source == staged.source, CASES.c.patient_id == patient_id
                )
            )
        ]
        # The patient's records: those whose mapped rows name the patient.
        theirs: set[int] = set()
        for table in MAPPING_TARGETS.values():
            column = table.c.id if table.name == "patients" else table.c.get("patient_id")
            if column is None:
                continue
            theirs.update(
                sid
                for sid in conn.execute(
                    select(table.c.staging_id).where(table.c.source == staged.source, column == patient_id)
                ).scalars()
                if sid is not None and sid != staging_id
            )
        if theirs:
            other_errors = [
                dict(r._mapping)
                for r in conn.execute(
                    select(
                        MAPPING_ERRORS.c.staging_id,
                        MAPPING_ERRORS.c.resource_type,
                        MAPPING_ERRORS.c.resource_id,
                        MAPPING_ERRORS.c.cause_id,
                        MAPPING_ERRORS.c.code,
                    ).where(
                        MAPPING_ERRORS.c.staging_id.in_(sorted(theirs)), MAPPING_ERRORS.c.status == "open"
                    )
                )
            ]
    return {
        "staged": dict(staged._mapping),
        "mapped": mapped,
        "errors": errors,
        "patient_id": patient_id,
        "cases": cases,
        "other_errors": other_errors,
    }
