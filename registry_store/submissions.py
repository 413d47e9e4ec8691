"""Registry submission tables: the ledger of packages sent, the cases each carried, the case
outcomes last computed, and the review errors submission raises. Every write to them is here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection

from registry_store.db import upsert
from registry_store.errors import ERROR_UPDATE_COLUMNS, error_row
from registry_store.tables import CASE_OUTCOMES as OUTCOMES
from registry_store.tables import CASES, SUBMISSIONS
from registry_store.tables import MAPPING_ERRORS as ERRORS
from registry_store.tables import SUBMISSION_ITEMS as ITEMS
from registry_store.timeutil import utcnow
from registry_types.issues import Issue

# Error scopes (``mapping_errors.mapping``) submission owns: readiness checks and registry feedback.
READINESS_SCOPE = "submission"
FEEDBACK_SCOPE = "registry-feedback"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """The last thing sent for a case."""

    case_key: str
    action: str
    content_hash: str
    submission_id: int


def save_case_outcomes(
    conn: Connection,
    source: str,
    outcomes: Mapping[str, dict[str, Any]],
    scope: Collection[str] | None = None,
) -> None:
    """Make ``outcomes`` the computed outcomes of ``source``'s cases, or only of the cases in
    ``scope`` (those of the patients recomputed); the others in it are dropped (their case is
    no longer active)."""
    now = utcnow()
    rows = [
        {"case_id": cid, "source": source, "outcomes": o, "computed_at": now} for cid, o in outcomes.items()
    ]
    upsert(conn, OUTCOMES, rows, keys=["case_id"])
    if scope is None:
        stale = select(OUTCOMES.c.case_id).where(OUTCOMES.c.source == source)
        gone = [cid for cid in conn.execute(stale).scalars() if cid not in outcomes]
    else:
        gone = sorted(cid for cid in scope if cid not in outcomes)
    for start in range(0, len(gone), 400):
        conn.execute(delete(OUTCOMES).where(OUTCOMES.c.case_id.in_(gone[start : start + 400])))


def drop_inactive_outcomes(conn: Connection, source: str) -> None:
    """Drop the stored outcomes of ``source``'s cases that are no longer active (after every
    active case's outcomes were saved, chunk by chunk)."""
    active = select(CASES.c.id).where(CASES.c.source == source, CASES.c.status == "active")
    conn.execute(delete(OUTCOMES).where(OUTCOMES.c.source == source, OUTCOMES.c.case_id.not_in(active)))


def ledger_state(conn: Connection) -> dict[str, LedgerEntry]:
    """The last item sent for each case ever submitted."""
    last = select(ITEMS.c.case_id, func.max(ITEMS.c.id).label("item_id")).group_by(ITEMS.c.case_id).subquery()
    rows = conn.execute(
        select(
            ITEMS.c.case_id, ITEMS.c.case_key, ITEMS.c.action, ITEMS.c.content_hash, ITEMS.c.submission_id
        ).join(last, ITEMS.c.id == last.c.item_id)
    )
    return {r.case_id: LedgerEntry(r.case_key, r.action, r.content_hash, r.submission_id) for r in rows}


def record_submission(
    conn: Connection,
    *,
    period: str,
    site_id: str,
    destination: str,
    package_name: str,
    package_sha256: str,
    dictionary_version: str,
    counts: Mapping[str, int],
    items: Sequence[Mapping[str, str]],
) -> int:
    """Write the ledger entry of a delivered package and its cases; returns its id.

    Called only once delivery succeeded, in one transaction, so the ledger never claims a
    package the registry does not have.
    """
    now = utcnow()
    sid = conn.execute(
        SUBMISSIONS.insert()
        .values(
            period=period,
            site_id=site_id,
            created_at=now,
            delivered_at=now,
            destination=destination[:500],
            package_name=package_name,
            package_sha256=package_sha256,
            dictionary_version=dictionary_version,
            counts=dict(counts),
        )
        .returning(SUBMISSIONS.c.id)
    ).scalar_one()
    if items:
        conn.execute(ITEMS.insert(), [{"submission_id": sid, **item} for item in items])
    return int(sid)




def replace_readiness_errors(
    conn: Connection,
    source: str,
    flagged: Mapping[int, tuple[str, str, Sequence[Issue]]],
    considered: Sequence[int],
) -> None:
    """Open an error for each required field a held-back case misses (on its anchor record,
    ``flagged``: staging id → resource type, id, issues), and resolve the readiness errors of the
    ``considered`` records that are now complete. Errors staff ignored stay ignored."""
    now = utcnow()
    rows = [
        error_row(source, sid, rtype, rid, READINESS_SCOPE, issue, now)
        for sid, (rtype, rid, issues) in flagged.items()
        for issue in issues
    ]
    keep = {(r["staging_id"], r["code"], r["field"]) for r in rows}
    ids = sorted(set(considered) | set(flagged))
    existing: list[Any] = []
    for start in range(0, len(ids), 400):
        existing += conn.execute(
            select(ERRORS.c.id, ERRORS.c.staging_id, ERRORS.c.code, ERRORS.c.field, ERRORS.c.status).where(
                ERRORS.c.mapping == READINESS_SCOPE, ERRORS.c.staging_id.in_(ids[start : start + 400])
            )
        ).all()
    ignored = {(r.staging_id, r.code, r.field) for r in existing if r.status == "ignored"}
    stale = [r.id for r in existing if r.status == "open" and (r.staging_id, r.code, r.field) not in keep]
    if stale:
        conn.execute(update(ERRORS).where(ERRORS.c.id.in_(stale)).values(status="resolved", last_seen=now))
    rows = [r for r in rows if (r["staging_id"], r["code"], r["field"]) not in ignored]
    upsert(conn, ERRORS, rows, keys=["staging_id", "code", "field"], update=ERROR_UPDATE_COLUMNS)


def add_feedback_errors(
    conn: Connection, source: str, staging_id: int, rtype: str, rid: str, issues: Sequence[Issue]
) -> int:
    """Open the registry's validation findings as review errors on a case's anchor record."""
    now = utcnow()
    rows = [error_row(source, staging_id, rtype, rid, FEEDBACK_SCOPE, issue, now) for issue in issues]
    upsert(conn, ERRORS, rows, keys=["staging_id", "code", "field"], update=ERROR_UPDATE_COLUMNS)
    return len(rows)


def resolve_feedback_errors(conn: Connection, staging_ids: Sequence[int]) -> None:
    """The registry's findings on these cases' anchors are resolved: the corrected case was sent."""
    for start in range(0, len(staging_ids), 400):
        conn.execute(
            update(ERRORS)
            .where(
                ERRORS.c.mapping == FEEDBACK_SCOPE,
                ERRORS.c.status == "open",
                ERRORS.c.staging_id.in_(list(staging_ids[start : start + 400])),
            )
            .values(status="resolved", last_seen=utcnow())
        )
