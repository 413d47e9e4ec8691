"""Staging: every received record, raw and hashed, before mapping.

Re-receiving identical content is a no-op; a changed record goes back to ``pending`` so the
mapper picks it up; an older version arriving after a newer one (overlap windows, resent v2
messages) is ignored rather than overwriting newer data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from adapters.base import Record, RecordError
from registry_store.models import MappingError, StagedRecord
from registry_store.timeutil import utcnow

STAGING = StagedRecord.__table__  # type: ignore[attr-defined]
ERRORS = MappingError.__table__  # type: ignore[attr-defined]

FHIR_CONTENT_TYPES = frozenset({"application/fhir+json", "application/json"})

# Staging rows for input that never became a resource carry this type.
UNPARSED = "Unparsed"


def content_hash(resource: dict[str, Any]) -> str:
    """Hash of the resource's content, blind to server bookkeeping in ``meta``.

    Servers bump ``meta.versionId``/``lastUpdated`` on no-op writes and serialise keys in any
    order; neither is a change the registry cares about.
    """
    meta = resource.get("meta")
    if isinstance(meta, dict) and ("versionId" in meta or "lastUpdated" in meta):
        resource = dict(resource)
        resource["meta"] = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
    return hashlib.sha256(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _parse_instant(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


@dataclass(slots=True)
class StageCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    stale: int = 0
    invalid: int = 0

    def add(self, other: StageCounts) -> None:
        self.inserted += other.inserted
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.stale += other.stale
        self.invalid += other.invalid


def stage_records(conn: Connection, source: str, records: Sequence[Record]) -> StageCounts:
    """Stage a batch of resources in the caller's transaction."""
    counts = StageCounts()
    if not records:
        return counts
    # The last occurrence of an identity within one batch wins, as it would across batches.
    latest: dict[tuple[str, str], Record] = {}
    for rec in records:
        latest[(rec.resource["resourceType"], str(rec.resource["id"]))] = rec
    existing: dict[tuple[str, str], tuple[int, str, str | None]] = {}
    by_type: dict[str, list[str]] = {}
    for rtype, rid in latest:
        by_type.setdefault(rtype, []).append(rid)
    for rtype, ids in by_type.items():
        # One IN list per type uses the (source, type, id) unique index directly.
        for start in range(0, len(ids), 900):
            rows = conn.execute(
                select(
                    STAGING.c.id, STAGING.c.resource_id, STAGING.c.content_hash, STAGING.c.last_updated
                ).where(
                    STAGING.c.source == source,
                    STAGING.c.resource_type == rtype,
                    STAGING.c.resource_id.in_(ids[start : start + 900]),
                )
            )
            for row in rows:
                existing[(rtype, row.resource_id)] = (row.id, row.content_hash, row.last_updated)
    now = utcnow()
    inserts: list[dict[str, Any]] = []
    for key, rec in latest.items():
        res = rec.resource
        meta = res.get("meta") if isinstance(res.get("meta"), dict) else {}
        # Raw messages (HL7 v2) are identified by their bytes; FHIR by its content.
        digest = (
            content_hash(res)
            if rec.raw is None or "json" in rec.content_type
            else hashlib.sha256(rec.raw).hexdigest()
        )
        last_updated = meta.get("lastUpdated") if meta else None
        values = {
            "version_id": (meta or {}).get("versionId"),
            "last_updated": last_updated,
            "content_type": rec.content_type,
            "content_hash": digest,
            "raw": rec.raw if rec.raw is not None else orjson.dumps(res),
            "origin": rec.origin[:512],
            "status": "pending",
            "updated_at": now,
        }
        found = existing.get(key)
        if found is None:
            inserts.append(
                {
                    "source": source,
                    "resource_type": key[0],
                    "resource_id": key[1],
                    "received_at": now,
                    **values,
                }
            )
            counts.inserted += 1
            continue
        row_id, old_hash, old_updated = found
        if old_hash == digest:
            counts.unchanged += 1
            continue
        if rec.content_type not in FHIR_CONTENT_TYPES:
            # A raw message reusing a control id with other content is a different message
            # (a sender bug), not a new version: keep both rather than lose the first.
            inserts.append(
                {
                    "source": source,
                    "resource_type": key[0],
                    "resource_id": f"{key[1]}#{digest[:12]}"[:256],
                    "received_at": now,
                    **values,
                }
            )
            counts.inserted += 1
            continue
        new_ts, old_ts = _parse_instant(last_updated), _parse_instant(old_updated)
        if new_ts and old_ts and new_ts < old_ts:
            counts.stale += 1
            continue
        conn.execute(update(STAGING).where(STAGING.c.id == row_id).values(**values))
        counts.updated += 1
    if inserts:
        conn.execute(STAGING.insert(), inserts)
    return counts


def error_identity(err: RecordError) -> tuple[str, str]:
    """Staging identity for input that has no usable resource id.

    Derived from the bytes (or, with none, the origin) so the same bad line re-sent is
    recognised as the same record rather than piling up duplicates.
    """
    basis = err.raw if err.raw is not None else err.origin.encode()
    rtype = err.resource_type or UNPARSED
    rid = err.resource_id or "sha256-" + hashlib.sha256(basis).hexdigest()[:40]
    return rtype, rid


def stage_errors(conn: Connection, source: str, errors: Iterable[RecordError]) -> StageCounts:
    """Keep unusable input as ``invalid`` staging rows, each with its mapping error."""
    from registry_store.errors import Issue, replace_errors

    counts = StageCounts()
    now = utcnow()
    for err in errors:
        rtype, rid = error_identity(err)
        raw = err.raw if err.raw is not None else b""
        digest = hashlib.sha256(raw).hexdigest()
        row = conn.execute(
            select(STAGING.c.id).where(
                STAGING.c.source == source,
                STAGING.c.resource_type == rtype,
                STAGING.c.resource_id == rid,
            )
        ).first()
        values = {
            "content_type": "application/octet-stream",
            "content_hash": digest,
            "raw": raw,
            "origin": err.origin[:512],
            "status": "invalid",
            "updated_at": now,
        }
        if row is None:
            staging_id = conn.execute(
                STAGING.insert()
                .values(source=source, resource_type=rtype, resource_id=rid, received_at=now, **values)
                .returning(STAGING.c.id)
            ).scalar_one()
        else:
            staging_id = row.id
            conn.execute(update(STAGING).where(STAGING.c.id == staging_id).values(**values))
        replace_errors(
            conn,
            staging_id=staging_id,
            source=source,
            resource_type=rtype,
            resource_id=rid,
            mapping="intake",
            issues=[Issue(code=err.code, field=err.field or "", message=err.message)],
        )
        counts.invalid += 1
    return counts


def mark_deleted(conn: Connection, source: str, resource_type: str, resource_id: str) -> int | None:
    """Flag a staged record as deleted at the source; returns its staging id if known."""
    row = conn.execute(
        select(STAGING.c.id).where(
            STAGING.c.source == source,
            STAGING.c.resource_type == resource_type,
            STAGING.c.resource_id == resource_id,
        )
    ).first()
    if row is None:
        return None
    conn.execute(update(STAGING).where(STAGING.c.id == row.id).values(status="deleted", updated_at=utcnow()))
    return int(row.id)
