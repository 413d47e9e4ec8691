"""Mapping errors as data: one row per (record, code, field), grouped into causes.

A *cause* is what one fix clears: the same error code, mapping and offending value (e.g.
"CPT 22899 not in spine-procedures code map"). Its id is a short stable hash so the review UI
and CLI can refer to it across runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.engine import Connection

from registry_store.db import upsert
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
    now = utcnow()
    seen: set[tuple[str, str]] = set()
    rows = []
    for issue in issues:
        key = (issue.code[:80], issue.field[:200])
        if key in seen:
            continue
        seen.add(key)
        rows.append(error_row(source, staging_id, resource_type, resource_id, mapping, issue, now))
    existing = [
        r
        for r in conn.execute(
            select(
                MAPPING_ERRORS.c.id,
                MAPPING_ERRORS.c.code,
                MAPPING_ERRORS.c.field,
                MAPPING_ERRORS.c.status,
                MAPPING_ERRORS.c.mapping,
            ).where(MAPPING_ERRORS.c.staging_id == staging_id)
        )
        if (r.mapping == CASE_SCOPE) == (mapping == CASE_SCOPE)
        or (mapping != CASE_SCOPE and not keep_case_errors)
    ]
    ignored = {(r.code, r.field) for r in existing if r.status == "ignored"}
    # A cause staff decided to ignore stays ignored for records that arrive later.
    ignored_causes = (
        set(
            conn.execute(
                select(ERROR_CAUSES.c.cause_id).where(
                    ERROR_CAUSES.c.cause_id.in_([r["cause_id"] for r in rows]),
                    ERROR_CAUSES.c.status == "ignored",
                )
            ).scalars()
        )
        if rows
        else set()
    )
    for r in rows:
        if r["cause_id"] in ignored_causes:
            r["status"] = "ignored"
    stale = [r.id for r in existing if (r.code, r.field) not in seen and r.status == "open"]
    if stale:
        conn.execute(
            update(MAPPING_ERRORS)
            .where(MAPPING_ERRORS.c.id.in_(stale))
            .values(status="resolved", last_seen=now)
        )
    rows = [r for r in rows if (r["code"], r["field"]) not in ignored]
    upsert(
        conn,
        MAPPING_ERRORS,
        rows,
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
