"""Staging: every received record, raw and hashed, before mapping.

Records are keyed by ``(source, resource_type, resource_id)``. FHIR records: re-receiving
identical content is a no-op; a changed record goes back to ``pending`` so the mapper picks it
up; an older version arriving after a newer one (overlap windows) is ignored rather than
overwriting newer data; within one batch the newest version of an identity wins (by
``meta.lastUpdated``, then a numeric ``meta.versionId``; the last occurrence on a tie), so where
batch boundaries fall never decides which version is kept. Raw messages
(HL7 v2) are identified by their content apart from MSH-7 (``message_digest``: senders restamp
the message time when they retransmit): a resend is a no-op, and a control id reused for other
content is a different message, staged beside the first (``place_raw_message``), never lost.
A record sent again after its source deleted it goes back to ``pending`` (unless it is older
than the staged version: a replay from before the delete). ``meta.versionId``/``lastUpdated``
that are not strings or do not fit their column are treated as absent; a type or id that is
missing or does not fit is refused with a ValueError (the pipeline catches those earlier).
A record that cannot be staged for any other reason (nested deeper than
``registry_types.json_limits.MAX_DEPTH``, content that cannot be hashed) becomes that record's
error, kept as an ``invalid`` row like other unusable input: it never stops the batch.

New rows are inserted with ``ON CONFLICT DO NOTHING``: when another process staged the same
identity in the meantime, the row it wrote is read back and the record is decided again
against it (newer wins, or the message goes to its other identity), so neither run fails.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

import orjson
from sqlalchemy import ColumnElement, and_, select, update
from sqlalchemy.engine import Connection

from adapters.hl7v2.header import message_digest
from registry_store.db import insert_new, lookup, update_rows, upsert
from registry_store.errors import replace_errors
from registry_store.tables import STAGING, column_length
from registry_store.timeutil import utcnow
from registry_types.issues import Issue
from registry_types.json_limits import TOO_DEEP_CODE, TOO_DEEP_MESSAGE, too_deep
from registry_types.records import Record, RecordError

IDENTITY = ("source", "resource_type", "resource_id")

# Column sizes, from the model, so these checks follow it.
TYPE_MAX = column_length(STAGING.c.resource_type)
ID_MAX = column_length(STAGING.c.resource_id)
VERSION_MAX = column_length(STAGING.c.version_id)
LAST_UPDATED_MAX = column_length(STAGING.c.last_updated)
ORIGIN_MAX = column_length(STAGING.c.origin)

# Staging rows for input that never became a resource carry this type.
UNPARSED = "Unparsed"

# Each round of staging a batch resolves every identity another process took concurrently;
# a raw message has three identities to try, so more rounds than that means a bug.
_MAX_ROUNDS = 4

T = TypeVar("T")

# What a changed record's staging row takes of it (``_incoming`` values).
_RESTAGED = (
    "version_id", "last_updated", "content_type", "content_hash", "raw", "origin", "status", "updated_at"
)


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


def is_raw_message(rec: Record) -> bool:
    """A raw message (HL7 v2) is identified by its content; anything JSON is a FHIR resource."""
    return rec.raw is not None and "json" not in rec.content_type


def raw_message_identities(ident: str, digest: str) -> tuple[str, str, str]:
    """The identities a raw message with this content may be staged under, in order.

    Its own (``<sending facility>|<MSH-10>``); for a control id reused with other content,
    ``<ident>#<digest[:12]>``; and, only should those 12 hex digits collide too, the full digest.
    """
    return ident, f"{ident[: ID_MAX - 13]}#{digest[:12]}", f"{ident[: ID_MAX - 65]}#{digest}"


def place_raw_message(
    rtype: str, ident: str, digest: str, staged: Mapping[tuple[str, str], StagedRow]
) -> tuple[str, bool]:
    """Where a raw message is staged: ``(identity, already_there)``.

    ``staged`` holds the rows known under the message's identities (``staged_rows``, plus
    those planned earlier in the batch). ``digest`` is ``message_digest`` of the message. The
    same content under any of them makes it a resend,
    ``(that identity, True)``; otherwise it goes to the first free one, ``(identity, False)``,
    so a reused control id never overwrites, nor is dropped as a duplicate of, another message.
    """
    candidates = raw_message_identities(ident, digest)
    rows = [staged.get((rtype, c)) for c in candidates]
    for cand, row in zip(candidates, rows, strict=True):
        if row is not None and row.content_hash == digest:
            return cand, True
    for cand, row in zip(candidates, rows, strict=True):
        if row is None:
            return cand, False
    # Only reachable if someone sends a control id ending in "#<64 hex digits>" on purpose.
    raise ValueError(
        f"every staging identity of a raw message is taken by other content (sha256 {digest[:12]})"
    )


class StagedRow(NamedTuple):
    """What staging decisions need of an existing row (``id`` None: planned in this batch)."""

    id: int | None
    content_hash: str
    last_updated: str | None
    status: str
    version_id: str | None = None


_STAGED_COLUMNS = ("id", "resource_id", "content_hash", "last_updated", "status", "version_id")


def staged_rows(
    conn: Connection, source: str, identities: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], StagedRow]:
    """The staged rows of ``source`` with these ``(resource_type, resource_id)`` identities."""
    by_type: dict[str, set[str]] = {}
    for rtype, rid in identities:
        by_type.setdefault(rtype, set()).add(rid)
    found: dict[tuple[str, str], StagedRow] = {}
    for rtype, id_set in by_type.items():
        # One probe of the (source, type, id) unique index per id.
        rows = lookup(conn, STAGING, _STAGED_COLUMNS, {"source": source, "resource_type": rtype},
                      "resource_id", sorted(id_set))
        for row in rows:
            found[(rtype, row.resource_id)] = StagedRow(
                row.id, row.content_hash, row.last_updated, row.status, row.version_id
            )
    return found


def insert_new_rows(conn: Connection, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert new staging rows; returns the positions of those another process beat to it.

    ``ON CONFLICT DO NOTHING`` rather than failing the whole transaction on the unique
    identity. A row that did not land is only a loss when the row in its place holds other
    content: those are returned for the caller to decide again against what is there now.
    """
    if not rows:
        return []
    # All of them landing (the common case: no other writer, every identity once) leaves
    # nothing to look at again; the MLLP listener's ACK latency is this.
    if insert_new(conn, STAGING, rows, keys=IDENTITY) == len(rows):
        return []
    # Otherwise only content tells which rows are this batch's (an identity twice in the
    # batch, or one another process staged meanwhile).
    there: dict[tuple[str, str, str], str] = {}
    for source in {r["source"] for r in rows}:
        keys = [(r["resource_type"], r["resource_id"]) for r in rows if r["source"] == source]
        there |= {(source, *key): row.content_hash for key, row in staged_rows(conn, source, keys).items()}
    return [
        i
        for i, r in enumerate(rows)
        if there[(r["source"], r["resource_type"], r["resource_id"])] != r["content_hash"]
    ]


def until_settled(stage_round: Callable[[list[T]], list[T]], todo: list[T]) -> None:
    """Run ``stage_round`` until it has nothing left to decide again.

    A round returns what another process staged first meanwhile (``insert_new_rows``); the
    next round decides those against the rows now there, and never loses the same race twice
    for the same identity, so this ends in a few rounds.
    """
    for _ in range(_MAX_ROUNDS):
        todo = stage_round(todo)
        if not todo:
            return
    raise RuntimeError("staging identities kept changing under concurrent writers")


def _meta_text(meta: Any, key: str, limit: int) -> str | None:
    """A ``meta`` string that fits its column; anything else (a number, an object, an
    over-long string) is treated as absent rather than failing the batch."""
    value = meta.get(key) if isinstance(meta, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= limit else None


def _parse_instant(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


def _version_number(value: str | None) -> int | None:
    # Servers number versions 1, 2, 3...; an opaque versionId says nothing about order.
    return int(value) if value is not None and value.isdigit() and len(value) < 19 else None


def is_older(new_updated: str | None, new_version: str | None, old_updated: str | None,
             old_version: str | None) -> bool:
    """Whether a version is older than one already seen: by ``meta.lastUpdated`` when both
    have it and they differ, else by numeric ``meta.versionId``; unknown order is not older."""
    new_ts, old_ts = _parse_instant(new_updated), _parse_instant(old_updated)
    if new_ts and old_ts and new_ts != old_ts:
        return new_ts < old_ts
    new_v, old_v = _version_number(new_version), _version_number(old_version)
    return new_v is not None and old_v is not None and new_v < old_v


def _identity(rec: Record) -> tuple[str, str]:
    """A record's staging identity, or ValueError naming what is wrong (never the value).

    The pipeline turns such records into errors before staging; this guards other callers.
    """
    rtype, rid = rec.resource.get("resourceType"), rec.resource.get("id")
    problem = None
    if not isinstance(rtype, str) or not rtype:
        problem = "resourceType is missing or not a string"
    elif len(rtype) > TYPE_MAX:
        problem = f"resourceType is longer than {TYPE_MAX} characters"
    elif not isinstance(rid, str) or not rid:
        problem = f"{rtype}.id is missing or not a string"
    elif len(rid) > ID_MAX:
        problem = f"{rtype}.id is longer than {ID_MAX} characters"
    if problem is not None:
        raise ValueError(f"cannot stage the record from {rec.origin[:ORIGIN_MAX]}: {problem}")
    assert isinstance(rtype, str) and isinstance(rid, str)
    return rtype, rid


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


@dataclass(slots=True)
class _Incoming:
    rtype: str
    rid: str
    raw_message: bool
    values: dict[str, Any]

    @property
    def digest(self) -> str:
        return str(self.values["content_hash"])

    def older_than(self, other: _Incoming) -> bool:
        return is_older(self.values["last_updated"], self.values["version_id"],
                        other.values["last_updated"], other.values["version_id"])

    def identities(self) -> Collection[str]:
        return raw_message_identities(self.rid, self.digest) if self.raw_message else (self.rid,)


class _Unstageable(Exception):
    """A record that cannot be staged as a resource; ``error`` is what is staged instead."""

    def __init__(self, error: RecordError):
        super().__init__(error.message)
        self.error = error


def _incoming(rec: Record, rtype: str, rid: str, now: datetime) -> _Incoming:
    res = rec.resource
    meta = res.get("meta")
    raw = rec.raw if is_raw_message(rec) else None
    try:
        if raw is None and too_deep(res):
            raise _Unstageable(_record_error(rec, rtype, rid, TOO_DEEP_CODE, TOO_DEEP_MESSAGE))
        values = {
            "version_id": _meta_text(meta, "versionId", VERSION_MAX),
            "last_updated": _meta_text(meta, "lastUpdated", LAST_UPDATED_MAX),
            "content_type": rec.content_type,
            "content_hash": message_digest(raw) if raw is not None else content_hash(res),
            "raw": rec.raw if rec.raw is not None else orjson.dumps(res),
            "origin": rec.origin[:ORIGIN_MAX],
            "status": "pending",
            "updated_at": now,
        }
    except _Unstageable:
        raise
    except Exception as exc:  # a poison record stops only itself
        message = f"record could not be staged ({type(exc).__name__})"
        raise _Unstageable(_record_error(rec, rtype, rid, "intake.unstageable", message)) from exc
    return _Incoming(rtype, rid, raw is not None, values)


def _record_error(rec: Record, rtype: str, rid: str, code: str, message: str) -> RecordError:
    """The error staged in place of ``rec``: its bytes as received when there are any.

    Kept under an identity of its own (a hash of those bytes, see ``error_identity``), never
    ``rid``: a poison copy must not overwrite a good version staged earlier.
    """
    return RecordError(f"{rec.origin} ({rtype}/{rid})"[:ORIGIN_MAX], code, message, field=rtype,
                       raw=rec.raw if rec.raw is not None else serialised(rec.resource),
                       resource_type=rtype)


def serialised(resource: dict[str, Any]) -> bytes:
    """A resource's JSON, to keep it raw when a source kept no bytes; never raises. A resource
    too deep for orjson (255 levels) goes through the standard library's encoder, and one
    too deep even for that is kept empty (its error still names it)."""
    try:
        return orjson.dumps(resource)
    except TypeError:
        try:
            return json.dumps(resource).encode()
        except (RecursionError, ValueError, TypeError):
            return b""


def stage_records(conn: Connection, source: str, records: Sequence[Record]) -> StageCounts:
    """Stage a batch of resources in the caller's transaction.

    Raises ValueError, before writing anything, for a record whose type or id is missing or
    longer than its column. Any other record that cannot be staged is kept as that record's
    error (``stage_errors``) and the others are staged.
    """
    counts = StageCounts()
    if not records:
        return counts
    now = utcnow()
    batch: dict[tuple[str, ...], _Incoming] = {}
    unstageable: list[RecordError] = []
    for index, rec in enumerate(records):
        rtype, rid = _identity(rec)
        try:
            item = _incoming(rec, rtype, rid, now)
        except _Unstageable as exc:
            unstageable.append(exc.error)
            continue
        if item.raw_message:
            # Raw messages each count: two with one control id may be two different messages.
            batch[(rtype, rid, str(index))] = item
            continue
        earlier = batch.get((rtype, rid))
        # FHIR: the newest version of an identity wins, as it does across batches.
        if earlier is not None and item.older_than(earlier):
            counts.stale += 1
            continue
        batch[(rtype, rid)] = item
    until_settled(lambda todo: _stage_round(conn, source, todo, counts, now), list(batch.values()))
    if unstageable:
        counts.add(stage_errors(conn, source, unstageable))
    return counts


def _stage_round(
    conn: Connection, source: str, items: Sequence[_Incoming], counts: StageCounts, now: datetime
) -> list[_Incoming]:
    """Decide each record against staging and write; returns those to decide again because
    another process staged their identity meanwhile (see ``insert_new_rows``)."""
    staged = staged_rows(conn, source, ((i.rtype, rid) for i in items for rid in i.identities()))
    inserts: list[dict[str, Any]] = []
    inserted: list[_Incoming] = []
    updates: list[dict[str, Any]] = []
    for item in items:
        if item.raw_message:
            rid, there = place_raw_message(item.rtype, item.rid, item.digest, staged)
            found = staged[(item.rtype, rid)] if there else None
        else:
            rid, found = item.rid, staged.get((item.rtype, item.rid))
        if found is None:
            inserts.append(
                {
                    "source": source,
                    "resource_type": item.rtype,
                    "resource_id": rid,
                    "received_at": now,
                    **item.values,
                }
            )
            inserted.append(item)
            # A later message of this batch with the same identity sees this one.
            staged[(item.rtype, rid)] = StagedRow(
                None, item.digest, item.values["last_updated"], "pending", item.values["version_id"]
            )
            continue
        if found.content_hash == item.digest and found.status != "deleted":
            counts.unchanged += 1
            continue
        if not item.raw_message and is_older(
            item.values["last_updated"], item.values["version_id"], found.last_updated, found.version_id
        ):
                # Also when deleted since: an older version is a replay from before the delete.
                counts.stale += 1
                continue
        # Changed, or sent again after its source deleted it: back to pending.
        updates.append({"id": found.id, **item.values})
        staged[(item.rtype, rid)] = found._replace(
            content_hash=item.digest,
            status="pending",
            last_updated=item.values["last_updated"],
            version_id=item.values["version_id"],
        )
        counts.updated += 1
    update_rows(conn, STAGING, updates, where=("id",), values=_RESTAGED)
    lost = insert_new_rows(conn, inserts)
    counts.inserted += len(inserts) - len(lost)
    return [inserted[i] for i in lost]


def error_identity(err: RecordError) -> tuple[str, str]:
    """Staging identity for input that has no usable resource id.

    Derived from the bytes (or, with none, the origin) so the same bad line re-sent is
    recognised as the same record rather than piling up duplicates.
    """
    basis = err.raw if err.raw else err.origin.encode()
    # A type or id that does not fit its column is as unusable as none.
    rtype = err.resource_type if err.resource_type and len(err.resource_type) <= TYPE_MAX else UNPARSED
    rid = err.resource_id if err.resource_id and len(err.resource_id) <= ID_MAX else None
    return rtype, rid or "sha256-" + hashlib.sha256(basis).hexdigest()[:40]


def stage_errors(conn: Connection, source: str, errors: Iterable[RecordError]) -> StageCounts:
    """Keep unusable input as ``invalid`` staging rows, each with its mapping error."""
    counts = StageCounts()
    now = utcnow()
    for err in errors:
        rtype, rid = error_identity(err)
        raw = err.raw if err.raw is not None else b""
        digest = hashlib.sha256(raw).hexdigest()
        values = {
            "content_type": "application/octet-stream",
            "content_hash": digest,
            "raw": raw,
            "origin": err.origin[:ORIGIN_MAX],
            "status": "invalid",
            "updated_at": now,
        }
        # Insert or overwrite in one statement: another process staging the same bad input
        # at the same time must not fail either run.
        upsert(
            conn,
            STAGING,
            [{"source": source, "resource_type": rtype, "resource_id": rid, "received_at": now, **values}],
            keys=IDENTITY,
            update=list(values),
        )
        staging_id = conn.execute(
            select(STAGING.c.id).where(
                STAGING.c.source == source,
                STAGING.c.resource_type == rtype,
                STAGING.c.resource_id == rid,
            )
        ).scalar_one()
        replace_errors(
            conn,
            staging_id=staging_id,
            source=source,
            resource_type=rtype,
            resource_id=rid,
            mapping="intake",
            issues=[Issue(code=err.code, field=err.field or "", message=err.message, rule="intake")],
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


def staged_from(conn: Connection, source: str, origin: str) -> list[tuple[str, str]]:
    """(type, id) of the live records last staged from ``origin`` (e.g. what one HL7 v2
    message converted into), so a re-conversion can tell which it no longer makes."""
    rows = conn.execute(
        select(STAGING.c.resource_type, STAGING.c.resource_id).where(
            STAGING.c.source == source, STAGING.c.origin == origin[:ORIGIN_MAX], STAGING.c.status != "deleted"
        )
    )
    return [(r.resource_type, r.resource_id) for r in rows]


def staged_from_origins(
    conn: Connection, source: str, origins: Sequence[str]
) -> dict[str, list[tuple[str, str]]]:
    """``staged_from`` for many origins in one query per 900: origin → its live (type, id)."""
    found: dict[str, list[tuple[str, str]]] = {}
    wanted = sorted({o[:ORIGIN_MAX] for o in origins})
    for start in range(0, len(wanted), 900):
        rows = conn.execute(
            select(STAGING.c.origin, STAGING.c.resource_type, STAGING.c.resource_id).where(
                STAGING.c.source == source,
                STAGING.c.origin.in_(wanted[start : start + 900]),
                STAGING.c.status != "deleted",
            )
        )
        for r in rows:
            found.setdefault(r.origin, []).append((r.resource_type, r.resource_id))
    return found


def record_mapping_outcomes(conn: Connection, outcomes: Sequence[Mapping[str, Any]]) -> None:
    """Each staged record's new status after mapping: ``{"sid", "digest", "new_status", "at"}``.

    Guarded by the content hash: a record re-staged meanwhile stays pending for the next
    round instead of being marked done with what was mapped from its older content.
    """
    if not outcomes:
        return
    rows = [{"id": o["sid"], "content_hash": o["digest"], "status": o["new_status"], "mapped_at": o["at"]}
            for o in outcomes]
    update_rows(conn, STAGING, rows, where=("id", "content_hash"), values=("status", "mapped_at"))


def mark_pending(conn: Connection, where: Sequence[ColumnElement[bool]], at: datetime) -> int:
    """Send the staged records matching ``where`` back to mapping; they carry ``at`` as their
    ``updated_at`` so a caller can map exactly them. Returns how many were selected."""
    marked = update(STAGING).where(and_(*where)).values(status="pending", updated_at=at)
    return int(conn.execute(marked).rowcount or 0)


# Below this many changed statuses the planner's statistics are still close enough.
BULK_CHANGE = 10_000


def refresh_statistics(conn: Connection) -> None:
    """Re-sample staging's planner statistics (PostgreSQL) after a bulk change of statuses.

    After ``reprocess --all`` marks every record pending, or a backfill stages hundreds of
    thousands, the statistics still describe the table before it until autovacuum gets to
    it: PostgreSQL then expects a few hundred pending rows, and the next-batch query
    (``status = 'pending' AND id > ? ORDER BY id LIMIT n``, with ``FOR UPDATE SKIP LOCKED``
    in ``worker``) bitmap-scans and sorts every pending row for each batch instead of
    reading the ``(status, id)`` index in order: 260 ms a batch at 130,000 pending, measured.
    ANALYZE samples a fixed number of rows, so it costs the same at any size.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("ANALYZE staging")
