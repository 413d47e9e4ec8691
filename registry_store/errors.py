"""Mapping errors as data: one row per (record, code, field), grouped into causes.

A *cause* is what one fix clears: the same error code, mapping and offending value (e.g.
"CPT 22899 not in spine-procedures code map"). Its id is a short stable hash so the review UI
and CLI can refer to it across runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, update
from sqlalchemy.engine import Connection

from registry_store.db import lookup, update_rows, upsert
from registry_store.tables import ERROR_CAUSES, MAPPING_ERRORS
from registry_store.timeutil import utcnow
from registry_types.issues import Issue

# Errors about a record that only case assembly can see (e.g. an add-on code whose surgery has
# no index procedure) are owned by case assembly: re-mapping the record leaves them alone.
CASE_SCOPE = "case-assembly"


def cause_id(code: str, mapping: str, value: str | None) -> str:
    return hashlib.sha256(f"{code}\x1f{mapping}\x1f{value or ''}".encode()).hexdigest()[:16]


# What a recurring error refreshes on its row (keyed by staging id, code and field).
ERROR_UPDATE_COLUMNS = [
    "mapping",
    "rule",
    "severity",
    "value",
    "message",
    "cause_id",
    "status",
    "last_seen",
    "resource_type",
    "resource_id",
    "source",
]


def error_row(
    source: str,
    staging_id: int,
    resource_type: str,
    resource_id: str,
    mapping: str,
    issue: Issue,
    now: datetime,
) -> dict[str, Any]:
    """A new open ``mapping_errors`` row for ``issue`` (one shape for every scope)."""
    return {
        "staging_id": staging_id,
        "source": source,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "mapping": mapping,
        # Bounded to their columns: a hostile element path must not fail the batch.
        "field": issue.field[:200],
        "rule": issue.rule[:100],
        "severity": issue.severity,
        "code": issue.code[:80],
        "value": (issue.value or None) and issue.value[:200],
        "message": issue.message,
        "cause_id": cause_id(issue.code, mapping, issue.value),
        "status": "open",
        "first_seen": now,
        "last_seen": now,
    }


# What replacing a record's errors reads of those it has.
_EXISTING = ("id", "staging_id", "code", "field", "status", "mapping")


@dataclass(frozen=True, slots=True)
class RecordErrors:
    """The errors one staged record has now (``replace_errors``)."""

    staging_id: int
    source: str
    resource_type: str
    resource_id: str
    mapping: str
    issues: Sequence[Issue]
    keep_case_errors: bool = True


def replace_errors(
    conn: Connection,
    *,
    staging_id: int,
    source: str,
    resource_type: str,
    resource_id: str,
    mapping: str,
    issues: Sequence[Issue],
    keep_case_errors: bool = True,
) -> None:
    """Make ``issues`` the open errors of a staged record.

    Errors seen again keep their ``first_seen``; errors no longer produced become ``resolved``
    (kept for history); ``ignored`` ones stay ignored. Case assembly (``mapping=CASE_SCOPE``)
    and mapping each manage only their own errors, except that a record that no longer maps
    (``keep_case_errors=False``) drops out of case assembly and so loses those errors too.
    """
    record = RecordErrors(staging_id, source, resource_type, resource_id, mapping, issues, keep_case_errors)
    replace_errors_of(conn, [record])


def replace_errors_of(conn: Connection, records: Sequence[RecordErrors]) -> None:
    """``replace_errors`` for many records, in a few statements for all of them (a mapping
    batch's records with issues: three queries each otherwise)."""
    if not records:
        return
    if len({r.staging_id for r in records}) < len(records):  # one record twice: in turn
        for one in records:
            replace_errors_of(conn, [one])
        return
    now = utcnow()
    new_rows: list[dict[str, Any]] = []
    seen: dict[int, set[tuple[str, str]]] = {}
    for rec in records:
        keys = seen[rec.staging_id] = set()
        for issue in rec.issues:
            key = (issue.code[:80], issue.field[:200])
            if key in keys:
                continue
            keys.add(key)
            new_rows.append(error_row(
                rec.source, rec.staging_id, rec.resource_type, rec.resource_id, rec.mapping, issue, now
            ))
    by_record = {rec.staging_id: rec for rec in records}
    existing = [
        r
        for r in lookup(conn, MAPPING_ERRORS, _EXISTING, {}, "staging_id", list(by_record))
        if (r.mapping == CASE_SCOPE) == (by_record[r.staging_id].mapping == CASE_SCOPE)
        or (by_record[r.staging_id].mapping != CASE_SCOPE and not by_record[r.staging_id].keep_case_errors)
    ]
    ignored = {(r.staging_id, r.code, r.field) for r in existing if r.status == "ignored"}
    # A cause staff decided to ignore stays ignored for records that arrive later.
    ignored_causes = {
        r.cause_id
        for r in lookup(conn, ERROR_CAUSES, ("cause_id",), {"status": "ignored"}, "cause_id",
                        {row["cause_id"] for row in new_rows})
    }
    for row in new_rows:
        if row["cause_id"] in ignored_causes:
            row["status"] = "ignored"
    stale = [
        r.id for r in existing if (r.code, r.field) not in seen[r.staging_id] and r.status == "open"
    ]
    if stale:
        update_rows(conn, MAPPING_ERRORS, [{"id": i, "status": "resolved", "last_seen": now} for i in stale],
                    where=("id",), values=("status", "last_seen"))
    new_rows = [r for r in new_rows if (r["staging_id"], r["code"], r["field"]) not in ignored]
    upsert(
        conn,
        MAPPING_ERRORS,
        new_rows,
        keys=["staging_id", "code", "field"],
        update=ERROR_UPDATE_COLUMNS,
    )


def resolve_all(conn: Connection, staging_ids: Sequence[int]) -> None:
    """A record mapped cleanly (or was deleted): its open errors are resolved."""
    if not staging_ids:
        return
    conn.execute(
        update(MAPPING_ERRORS)
        .where(and_(MAPPING_ERRORS.c.staging_id.in_(list(staging_ids)), MAPPING_ERRORS.c.status == "open"))
        .values(status="resolved", last_seen=utcnow())
    )


def decide_cause(conn: Connection, cause_id: str, *, status: str, reason: str, by: str) -> int:
    """Staff's decision on a cause: ``ignored`` (its open errors become ignored, and so will
    errors of the cause that arrive later) or ``open`` again. Returns the errors changed."""
    src, dst = ("open", "ignored") if status == "ignored" else ("ignored", "open")
    changed = conn.execute(
        update(MAPPING_ERRORS)
        .where(MAPPING_ERRORS.c.cause_id == cause_id, MAPPING_ERRORS.c.status == src)
        .values(status=dst)
    ).rowcount
    decision = {
        "cause_id": cause_id,
        "status": status,
        "reason": reason,
        "updated_by": by,
        "updated_at": utcnow(),
    }
    upsert(conn, ERROR_CAUSES, [decision], keys=["cause_id"])
    return int(changed or 0)
