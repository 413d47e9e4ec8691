"""The one path for data: source → staging → mapping → registry tables → cases.

``ingest`` stages what a source yields and commits it together with the source's state at
each checkpoint, so a killed run resumes where it stopped and nothing committed is lost.
``map_pending`` maps staged records in batches (each batch, its registry rows, its mapping
errors and the cases it touches commit together). ``reprocess`` puts records back to pending
after a mapping or code map was fixed, without asking the hospital again.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import orjson
import structlog
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from adapters.base import (
    Checkpoint,
    Deleted,
    Inventory,
    Record,
    RecordError,
    Source,
    SourceContext,
    SourceIncomplete,
)
from adapters.hl7v2.records import HL7_CONTENT_TYPE, Converted, convert_staged, converted_origin
from adapters.validation import as_mapped, quick_validate, settle, validator_id
from mappings.cases import assemble_cases
from registry_adapter import logs
from registry_adapter.app import App
from registry_adapter.mapping_pool import (
    StagedForMapping,
    as_plain,
    attach_rows,
    mapping_pool,
    prepare_batch,
    resolve_workers,
)
from registry_store import sync_runs
from registry_store.case_queue import dequeue, enqueue, queued
from registry_store.db import commit_unflushed, lookup, one_of
from registry_store.errors import RecordErrors, replace_errors_of, resolve_all
from registry_store.leases import holders, job_lock, sync_lock_name
from registry_store.mapped_rows import delete_mapped_rows, write_mapped_rows
from registry_store.patient_merge import file_under_survivors, merge_patient
from registry_store.staging import (
    BULK_CHANGE,
    ORIGIN_MAX,
    StageCounts,
    content_hash,
    mark_deleted,
    mark_pending,
    record_mapping_outcomes,
    refresh_statistics,
    serialised,
    stage_errors,
    stage_records,
    staged_from,
    staged_from_origins,
)
from registry_store.tables import (
    CASES,
    CONDITIONS,
    ENCOUNTERS,
    MAPPING_ERRORS,
    MAPPING_TARGETS,
    PATIENTS,
    PROCEDURES,
    PROM_RESPONSES,
    SOURCE_STATE,
    STAGING,
)
from registry_store.timeutil import utcnow
from registry_store.verdicts import known_verdicts, record_verdicts
from registry_types import metrics
from registry_types.issues import Issue

log = structlog.get_logger(__name__)

# What mapping reads of a staged record.
_MAP_COLUMNS = (
    STAGING.c.id,
    STAGING.c.source,
    STAGING.c.resource_type,
    STAGING.c.resource_id,
    STAGING.c.content_type,
    STAGING.c.content_hash,
    STAGING.c.raw,
)

ProgressFn = Callable[[str, dict[str, int]], None]


@dataclass
class RunCounts:
    received: int = 0
    staged_new: int = 0
    staged_updated: int = 0
    unchanged: int = 0
    stale: int = 0
    invalid: int = 0
    deleted: int = 0
    mapped: int = 0
    failed: int = 0
    out_of_scope: int = 0
    excluded: int = 0
    cases: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def add(self, other: RunCounts) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def tally(self, status: str) -> None:
        """Count one mapped record by what became of it."""
        if status == "mapped":
            self.mapped += 1
        elif status in ("failed", "invalid"):
            self.failed += 1
        elif status == "excluded":
            self.excluded += 1
        else:
            self.out_of_scope += 1


@dataclass
class Prepared:
    """What mapping decided for one staged record, before anything is written."""

    row: Any
    status: str
    issues: list[Issue]
    mapping_name: str
    target: str | None = None
    out: dict[str, Any] | None = None
    remove: bool = False  # the record no longer produces registry rows: delete them
    converted: Converted | None = None
    # A validation verdict given now (digest of the raw bytes, issues), kept with the batch.
    verdict: tuple[str, list[Issue]] | None = None


@dataclass
class RunResult:
    run_id: int
    source: str
    outcome: str
    counts: RunCounts
    seconds: float
    state: dict[str, Any] = field(default_factory=dict)
    # Why the run did not succeed (``partial``: what stopped; the rest was synced).
    failure: str | None = None


class SourceBusy(RuntimeError):
    """Another process holds this source's sync lease."""


_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z0-9]{1,63}$")


def identity_problem(resource: dict[str, Any]) -> str | None:
    """Why a resource cannot be staged under its identity (type and id), if it cannot.

    The message names the element and what is wrong, never the value.
    """
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if not isinstance(rtype, str) or not _RESOURCE_TYPE.match(rtype):
        return "resourceType is not a FHIR resource type name"
    if not isinstance(rid, str) or not rid.strip():
        return f"{rtype}.id is missing or not a string"
    if len(rid) > 256:
        return f"{rtype}.id is longer than 256 characters"
    return None


def describe_failure(exc: BaseException) -> str:
    """A run's failure for the sync_runs table and the UI: never a driver's message, which
    can quote the values it failed to bind."""
    if isinstance(exc, DBAPIError):
        return f"database error ({type(exc.orig).__name__})"
    return f"{type(exc).__name__}: {exc}"[:2000]


def _hash_origin(item: Record | RecordError | Deleted) -> str:
    return hashlib.sha256(item.origin.encode()).hexdigest()[:16]


def unstageable(item: Record | RecordError, exc: BaseException) -> RecordError:
    """What is kept of a record staging failed on: its bytes and the error's class, never
    the error's text (a driver's message may quote values)."""
    if isinstance(item, Record):
        raw = item.raw if item.raw is not None else serialised(item.resource)
        rtype = item.resource.get("resourceType")
        return RecordError(item.origin, "intake.unstageable",
                           f"record could not be staged ({type(exc).__name__})",
                           raw=raw, resource_type=rtype if isinstance(rtype, str) else None)
    return RecordError(item.origin, "intake.unstageable",
                       f"input could not be kept as an error ({type(exc).__name__})", raw=item.raw)


def source_endpoint(source: Source) -> str | None:
    """The base URL of a source that has one (FHIR REST and Bulk), for failure logs."""
    base = getattr(getattr(source, "cfg", None), "base_url", None)
    return str(base) if base else None


def load_state(conn: Connection, source: str) -> dict[str, Any]:
    row = conn.execute(select(SOURCE_STATE.c.state).where(SOURCE_STATE.c.source == source)).first()
    return dict(row.state) if row else {}


class Pipeline:
    def __init__(self, app: App, progress: ProgressFn | None = None):
        self.app = app
        self.progress = progress or (lambda _note, _counts: None)
        self.batch_size = app.settings.batch_size
        self.workers = resolve_workers(app.settings.mapping_workers)
        self.strictness = app.settings.mappings.validation

    # -- intake -------------------------------------------------------------------------

    def ingest(
        self, source: Source, ctx: SourceContext | None = None, *, kind: str = "sync", map_now: bool = True
    ) -> RunResult:
        """Pull from ``source`` into staging, then map what changed.

        A lease per source keeps a manual sync and the nightly job (or two adapter processes
        on one database) from pulling the same feed at once; the loser gets ``SourceBusy``.
        """
        ttl = self.app.settings.lease_ttl_seconds()
        name = sync_lock_name(source.name)
        with job_lock(self.app.engine, name, ttl, heartbeat=True) as lock:
            if lock is None:
                held_by = (
                    "; ".join(h.describe() for h in holders(self.app.engine, name)) or "lease just released"
                )
                raise SourceBusy(
                    f"source {source.name} is being synced by another process ({held_by}); try again later"
                )
            return self._ingest(source, ctx, kind=kind, map_now=map_now)

    def _ingest(self, source: Source, ctx: SourceContext | None, *, kind: str, map_now: bool) -> RunResult:
        engine = self.app.engine
        with engine.begin() as conn:
            # We hold the source's lease: a run still "running" was left by a dead holder.
            sync_runs.mark_runs_interrupted(conn, source.name)
            state = load_state(conn, source.name)
            run_id = sync_runs.start_run(conn, source=source.name, kind=kind, watermark=state)
        ctx = ctx or SourceContext()
        ctx.state = state if not ctx.state else ctx.state
        counts = RunCounts()
        started = time.monotonic()
        records: list[Record] = []
        errors: list[RecordError] = []
        deletions: list[Deleted] = []
        inventories: list[Inventory] = []
        # Every line logged during the run (library warnings too) carries its run_id.
        bound = structlog.contextvars.bind_contextvars(run_id=run_id, source=source.name)
        log.info("sync.start", kind=kind)

        def flush(checkpoint: Checkpoint | None) -> None:
            reconciled = 0
            try:
                with engine.begin() as conn:
                    if checkpoint is None:
                        commit_unflushed(conn)  # re-received if lost: it was not checkpointed
                    staged = self._stage_batch(conn, source.name, records, errors, deletions)
                    reconciled = self._reconcile(conn, source.name, inventories)
                    if checkpoint is not None:
                        sync_runs.save_source_state(conn, source.name, checkpoint.state)
            except Exception as exc:
                # One poison record must not stop the feed: stage the batch one by one, so
                # that record becomes its own error and the rest (and the checkpoint) land.
                log.warning("sync.batch_retried_alone", source=source.name, error=type(exc).__name__)
                staged = self._stage_alone(source.name, records, errors, deletions)
                with engine.begin() as conn:
                    # After this batch's records are staged (they are on the inventory too).
                    reconciled = self._reconcile(conn, source.name, inventories)
                if checkpoint is not None:
                    with engine.begin() as conn:
                        sync_runs.save_source_state(conn, source.name, checkpoint.state)
            counts.staged_new += staged.inserted
            counts.staged_updated += staged.updated
            counts.unchanged += staged.unchanged
            counts.stale += staged.stale
            counts.invalid += staged.invalid
            counts.deleted += len(deletions) + reconciled
            records.clear()
            errors.clear()
            deletions.clear()
            inventories.clear()

        outcome, failure = "succeeded", None
        final_state: dict[str, Any] = dict(state)
        try:
            try:
                for item in source.read(ctx):
                    if isinstance(item, Record):
                        counts.received += 1
                        problem = identity_problem(item.resource)
                        if problem is None:
                            records.append(item)
                        else:
                            errors.append(
                                RecordError(
                                    item.origin,
                                    "intake.invalid_identity",
                                    problem,
                                    field=problem.split(" ", 1)[0],
                                    raw=item.raw or serialised(item.resource),
                                )
                            )
                    elif isinstance(item, RecordError):
                        counts.received += 1
                        errors.append(item)
                    elif isinstance(item, Deleted):
                        deletions.append(item)
                    elif isinstance(item, Inventory):
                        inventories.append(item)
                    elif isinstance(item, Checkpoint):
                        flush(item)
                        final_state = dict(item.state)
                        self.progress(item.progress or "", counts.as_dict())
                        continue
                    if len(records) + len(errors) >= self.batch_size:
                        # Staging without a checkpoint is safe: re-receiving is a no-op.
                        flush(None)
                        self.progress("", counts.as_dict())
            except SourceIncomplete as exc:
                # What the source yielded before stopping is complete: map it, say what stopped.
                outcome, failure = "partial", describe_failure(exc)
                log.warning("sync.partial", **logs.failure_fields(exc, source_endpoint(source)))
            flush(None)
            if counts.staged_new + counts.staged_updated >= BULK_CHANGE:
                with engine.begin() as conn:
                    refresh_statistics(conn)
            if map_now:
                mapped = self.map_pending(sources=[source.name])
                for name in ("mapped", "failed", "out_of_scope", "excluded", "cases"):
                    setattr(counts, name, getattr(mapped, name))
        except KeyboardInterrupt:
            outcome, failure = "interrupted", "interrupted by the operator"
            raise
        except Exception as exc:
            outcome, failure = "failed", describe_failure(exc)
            log.error("sync.failed", **logs.failure_fields(exc, source_endpoint(source)))
            raise
        finally:
            try:
                seconds = time.monotonic() - started
                with engine.begin() as conn:
                    sync_runs.finish_run(
                        conn,
                        run_id,
                        outcome=outcome,
                        counts=counts.as_dict(),
                        watermark=final_state,
                        error=failure,
                    )
                metrics.observe_sync(source.name, outcome, seconds)
                log.info("sync.finish", outcome=outcome, seconds=round(seconds, 2), **counts.as_dict())
            finally:
                structlog.contextvars.reset_contextvars(**bound)
        return RunResult(run_id, source.name, outcome, counts, seconds, final_state, failure)

    def _missing_from(self, conn: Connection, source: str, inventory: Inventory) -> list[str]:
        """Ids of staged records of the inventory's type that the source no longer has."""
        staged = conn.execute(
            select(STAGING.c.resource_id).where(
                STAGING.c.source == source,
                STAGING.c.resource_type == inventory.resource_type,
                STAGING.c.status.notin_(["deleted", "invalid"]),
            )
        ).scalars()
        missing = sorted(set(staged) - inventory.resource_ids)
        if missing:
            log.info("sync.deleted_at_source", source=source, type=inventory.resource_type, n=len(missing))
        return missing

    def _reconcile(self, conn: Connection, source: str, inventories: Sequence[Inventory]) -> int:
        """Mark deleted what a complete inventory of the source no longer lists."""
        deleted = 0
        for inventory in inventories:
            missing = self._missing_from(conn, source, inventory)
            for rid in missing:
                self._delete(conn, source, inventory.resource_type, rid)
            deleted += len(missing)
        return deleted

    def _stage_batch(
        self,
        conn: Connection,
        source: str,
        records: Sequence[Record],
        errors: Sequence[RecordError],
        deletions: Sequence[Deleted],
    ) -> StageCounts:
        staged = stage_records(conn, source, records)
        staged.add(stage_errors(conn, source, errors))
        for gone in deletions:
            self._delete(conn, source, gone.resource_type, gone.resource_id)
        return staged

    def _stage_alone(
        self,
        source: str,
        records: Sequence[Record],
        errors: Sequence[RecordError],
        deletions: Sequence[Deleted],
    ) -> StageCounts:
        """Stage a batch that failed as a whole item by item; an item that fails again is
        kept as that record's error (``intake.unstageable``, raw bytes kept)."""
        staged = StageCounts()
        items: list[Record | RecordError | Deleted] = [*records, *errors, *deletions]
        for item in items:
            try:
                with self.app.engine.begin() as conn:
                    staged.add(
                        self._stage_batch(
                            conn,
                            source,
                            [item] if isinstance(item, Record) else [],
                            [item] if isinstance(item, RecordError) else [],
                            [item] if isinstance(item, Deleted) else [],
                        )
                    )
            except Exception as exc:
                log.error("sync.record_unstageable", source=source, origin_hash=_hash_origin(item),
                          error=type(exc).__name__)
                if isinstance(item, Deleted):
                    raise  # a deletion that cannot be applied must not be checkpointed past
                with self.app.engine.begin() as conn:
                    staged.add(stage_errors(conn, source, [unstageable(item, exc)]))
        return staged

    def _delete(self, conn: Connection, source: str, rtype: str, rid: str) -> set[str]:
        staging_id = mark_deleted(conn, source, rtype, rid)
        if staging_id is not None:
            resolve_all(conn, [staging_id])
        patients = self._remove_rows(conn, source, rtype, [rid])
        self._assemble(conn, {source: patients})
        return patients

    # -- mapping ------------------------------------------------------------------------

    def map_pending(self, sources: Iterable[str] | None = None, where: Any = None) -> RunCounts:
        """Map every pending staged record (of ``sources``, matching ``where``), a batch per
        transaction.

        Each batch is read, then mapped and converted (pure CPU: v2 parsing costs ~20 ms a
        message) with no write lock held, so the MLLP listener keeps acknowledging; only the
        writes happen in the batch's transaction. A record whose rows cannot be written fails
        alone: the batch is retried record by record and the others still land.
        """
        counts = RunCounts()
        names = list(sources) if sources is not None else None

        def read(after: int) -> _ReadBatch:
            query = (
                select(*_MAP_COLUMNS)
                .where(STAGING.c.status == "pending", STAGING.c.id > after)
                .order_by(STAGING.c.id)
                .limit(self.batch_size)
            )
            if names is not None:
                query = query.where(STAGING.c.source.in_(names))
            if where is not None:
                query = query.where(where)
            # The batch's known verdicts in the same connection: a connection costs ~3 round
            # trips of its own (ping, BEGIN, ROLLBACK), which on a busy host cost more than the reads.
            with self.app.engine.connect() as conn:
                rows = [as_plain(r) for r in conn.execute(query)]
                return _ReadBatch(rows, self._known_verdicts(rows, conn))

        first = read(0)
        if len(first.rows) == self.batch_size and self.workers > 1:
            self._map_in_pool(first, read, counts)
        else:
            self._map_here(first, read, counts)
        counts.cases += self.assemble_queued()
        return counts

    def _map_here(self, batch: _ReadBatch, read: Callable[[int], _ReadBatch], counts: RunCounts) -> None:
        # A converted v2 message re-stages records it updates (an A08's Procedure) at their old,
        # lower staging ids: after such a batch, one more pass from the start maps them (one:
        # what that pass converts again was re-staged meanwhile and waits for the next run).
        converted, restarted = False, False
        while True:
            if not batch.rows:
                if not converted or restarted:
                    break
                restarted = True
                batch = read(0)
                continue
            converted |= self._map_batch(batch.rows, counts, batch.verdicts)
            batch = read(batch.rows[-1].id)

    def _map_in_pool(self, batch: _ReadBatch, read: Callable[[int], _ReadBatch], counts: RunCounts) -> None:
        """``_map_here`` with the mapping shared with ``workers - 1`` child processes; the
        writes stay here, in staging order.

        The children are kept ``workers`` batches ahead. While the oldest batch is still being
        mapped this process maps the next one itself instead of waiting (up to ``workers``
        more): mapping costs about twice the writes, so on two cores the parent writes every
        batch and maps about one in three, and both cores stay busy.
        """
        converted, restarted = False, False
        # (mapped rows, the staged rows, whether a child maps them), oldest first.
        in_flight: deque[tuple[Future[list[Prepared]], list[StagedForMapping], bool]] = deque()
        pooled, last_id = 0, 0
        with mapping_pool(self, self.workers) as pool:
            assert pool is not None
            # The first batch is mapped here, before the first submit forks the children: the
            # lookups and compiled paths it caches are then theirs too, not rebuilt in each.
            in_flight.append((self._prepared_here(batch), batch.rows, False))
            last_id = batch.rows[-1].id
            batch = read(last_id)
            while True:
                while batch.rows and pooled < self.workers:
                    last_id, pooled = batch.rows[-1].id, pooled + 1
                    mapped = pool.submit(prepare_batch, batch.rows, batch.verdicts)
                    in_flight.append((mapped, batch.rows, True))
                    batch = read(last_id)
                if not in_flight:
                    # Everything read is written: what conversions staged meanwhile is read now.
                    batch = read(last_id)
                    if batch.rows:
                        continue
                    if not converted or restarted:
                        break
                    restarted, last_id = True, 0
                    batch = read(0)
                    continue
                if batch.rows and not in_flight[0][0].done() and len(in_flight) < 2 * self.workers:
                    in_flight.append((self._prepared_here(batch), batch.rows, False))
                    last_id = batch.rows[-1].id
                    batch = read(last_id)
                    continue
                future, rows, in_child = in_flight.popleft()
                pooled -= in_child
                converted |= self._write_batch(attach_rows(future.result(), rows), counts)
                if not batch.rows:
                    batch = read(last_id)

    def _prepared_here(self, batch: _ReadBatch) -> Future[list[Prepared]]:
        done: Future[list[Prepared]] = Future()
        done.set_result([self._prepare(row, batch.verdicts) for row in batch.rows])
        return done

    def assemble_queued(self, chunk: int = 500) -> int:
        """Assemble the cases of every queued patient (touched by mapping since the last drain),
        ``chunk`` patients a transaction; returns how many of their cases are active.

        A chunk that fails is assembled patient by patient, so one patient whose data trips a
        bug stays queued (and logged) while the others' cases land.
        """
        total, chunks = 0, 0
        after: tuple[str, str] | None = None
        while True:
            # A chunk at a time (O(chunk) memory whatever the queue's length), from after the
            # last one read: pairs that failed stay queued behind it and are not read again.
            with self.app.engine.connect() as conn:
                pairs = queued(conn, chunk, after)
            if not pairs:
                return total
            after, chunks = pairs[-1], chunks + 1
            try:
                total += self._assemble_pairs(pairs)
            except Exception:
                for pair in pairs:
                    try:
                        total += self._assemble_pairs([pair])
                    except Exception as exc:
                        log.error("cases.assembly_failed", source=pair[0], error=type(exc).__name__)
            if chunks > 1 or len(pairs) == chunk:
                self.progress("cases", {"cases": total})

    def _assemble_pairs(self, pairs: Sequence[tuple[str, str]]) -> int:
        with self.app.engine.begin() as conn:
            commit_unflushed(conn)  # if lost, the pairs are still queued
            return self.assemble_and_dequeue(conn, pairs)

    def assemble_and_dequeue(self, conn: Connection, pairs: Sequence[tuple[str, str]]) -> int:
        """Assemble these queued (source, patient) pairs and take them off the queue, in
        ``conn``'s transaction; returns how many of their cases are active."""
        by_source: dict[str, set[str]] = defaultdict(set)
        for source, patient in pairs:
            by_source[source].add(patient)
        total = self._assemble(conn, by_source)
        dequeue(conn, pairs)
        return total

    def _map_batch(
        self, batch: Sequence[Any], counts: RunCounts, verdicts: dict[str, list[Issue]] | None = None
    ) -> bool:
        """Map one batch of staged rows: prepare outside any transaction, write in one.
        Returns whether it converted v2 messages (which stage records). ``verdicts``: those
        known on the batch's records, when read with it."""
        if verdicts is None:
            verdicts = self._known_verdicts(batch)
        return self._write_batch([self._prepare(row, verdicts) for row in batch], counts)

    def _write_batch(self, prepared: list[Prepared], counts: RunCounts) -> bool:
        try:
            with self.app.engine.begin() as conn:
                commit_unflushed(conn)  # if lost, the records are still pending
                counts.add(self._write(conn, prepared))
        except Exception:  # a database refusal, or a bug one record triggers: it fails alone
            for one in prepared:
                counts.add(self._write_alone(one))
        self.progress("mapping", counts.as_dict())
        return any(one.converted is not None and one.converted.records for one in prepared)

    def _known_verdicts(self, batch: Sequence[Any], conn: Connection | None = None) -> dict[str, list[Issue]]:
        """Validation verdicts already given on the exact bytes of this batch's FHIR records
        (read through ``conn`` when given, else on a connection of its own)."""
        if self.strictness == "off":
            return {}
        digests = [_raw_digest(r.raw) for r in batch if r.content_type != HL7_CONTENT_TYPE]
        if not digests:
            return {}
        if conn is not None:
            return known_verdicts(conn, validator_id(), digests)
        with self.app.engine.connect() as own:
            return known_verdicts(own, validator_id(), digests)

    def _write_alone(self, one: Prepared) -> RunCounts:
        try:
            with self.app.engine.begin() as conn:
                return self._write(conn, [one])
        except DBAPIError as exc:
            # Only the driver's error class: its message may quote bound values (PHI).
            log.error("mapping.write_failed", staging_id=one.row.id, error=type(exc.orig).__name__)
            issue = Issue(
                "store.write_failed",
                f"registry rows of this record could not be stored ({type(exc.orig).__name__}); "
                "check values against column sizes",
                field=one.row.resource_type,
                rule="store",
            )
            failed = Prepared(one.row, "failed", [issue], one.mapping_name)
        except Exception as exc:  # a bug (e.g. in case assembly) this record triggers
            log.error("mapping.internal_error", staging_id=one.row.id, error=type(exc).__name__)
            issue = Issue(
                "mapping.internal_error",
                f"writing this record's registry rows failed unexpectedly ({type(exc).__name__})",
                field=one.row.resource_type,
                rule="mapping",
            )
            failed = Prepared(one.row, "failed", [issue], one.mapping_name, remove=True)
        with self.app.engine.begin() as conn:
            return self._write(conn, [failed])

    def _write(self, conn: Connection, prepared: Sequence[Prepared]) -> RunCounts:
        counts = RunCounts()
        ids = [p.row.id for p in prepared]
        record_verdicts(conn, validator_id(), [p.verdict for p in prepared if p.verdict is not None])
        with_errors = {
            r.staging_id
            for r in conn.execute(
                select(MAPPING_ERRORS.c.staging_id).where(
                    one_of(MAPPING_ERRORS.c.staging_id, ids, conn.dialect), MAPPING_ERRORS.c.status == "open"
                )
            )
        }
        writes: dict[str, list[dict[str, Any]]] = defaultdict(list)
        removals: dict[tuple[str, str], list[str]] = defaultdict(list)
        touched: dict[str, set[str]] = defaultdict(set)
        statuses: list[dict[str, Any]] = []
        error_updates: list[RecordErrors] = []
        now = utcnow()
        self._write_conversions(conn, [one for one in prepared if one.converted is not None])
        for one in prepared:
            row = one.row
            if one.converted is not None:
                touched[row.source] |= {p for pair in one.converted.merges for p in pair}
            if one.target is not None and one.out is not None:
                writes[one.target].append(one.out)
                person = one.out.get("patient_id") or (one.out["id"] if one.target == "patients" else None)
                if person:
                    # A Patient row can link feeds (by pseudonym), so it re-assembles that person too.
                    touched[row.source].add(str(person))
            elif one.remove:
                removals[(row.source, row.resource_type)].append(row.resource_id)
            statuses.append({"sid": row.id, "digest": row.content_hash, "new_status": one.status, "at": now})
            counts.tally(one.status)
            if one.issues or row.id in with_errors:
                error_updates.append(
                    RecordErrors(
                        row.id, row.source, row.resource_type, row.resource_id, one.mapping_name, one.issues,
                        keep_case_errors=one.status == "mapped",
                    )
                )
        replace_errors_of(conn, error_updates)
        for (source, rtype), rids in removals.items():
            touched[source] |= self._remove_rows(conn, source, rtype, rids)
        for target, rows in writes.items():
            for source in {r["source"] for r in rows}:
                here = [r for r in rows if r["source"] == source]
                touched[source] |= file_under_survivors(conn, source, here)
                touched[source] |= self._patients_of(conn, target, source, [r["id"] for r in here])
            write_mapped_rows(conn, target, rows)
        record_mapping_outcomes(conn, statuses)
        # Assembled once per run when map_pending drains the queue, not once per batch.
        enqueue(conn, touched)
        return counts

    def _write_conversions(self, conn: Connection, prepared: Sequence[Prepared]) -> None:
        """Stage what the batch's v2 messages converted into, in message order.

        Messages that only add or update records are staged together, one ``stage_records``
        per run of them (a message costs ~1 ms of round trips alone); a run ends before a
        message that deletes, merges, or leaves behind records of an earlier conversion, and
        before one that stages an identity the run already holds with other content, and that
        message is written on its own, so the result is the one of writing each message in
        turn. (The same content again, e.g. the surgeon's Practitioner in every message, is
        left out of the run: written in turn it would be an unchanged no-op.)
        """
        if not prepared:
            return
        earlier: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for source in {one.row.source for one in prepared}:
            origins = [converted_origin(one.row.resource_id) for one in prepared if one.row.source == source]
            for origin, keys in staged_from_origins(conn, source, origins).items():
                earlier[(source, origin)] = keys
        run: list[Record] = []
        run_ids: dict[tuple[str, str], Record] = {}
        run_source: str | None = None

        def flush() -> None:
            if run and run_source is not None:
                stage_records(conn, run_source, run)
            run.clear()
            run_ids.clear()

        for one in prepared:
            converted = one.converted
            assert converted is not None
            made = {(r.resource["resourceType"], r.resource["id"]) for r in converted.records}
            left = earlier.get((one.row.source, converted_origin(one.row.resource_id)[:ORIGIN_MAX]), [])
            alone = (
                bool(converted.deleted or converted.merges)
                or (not converted.failed and any(key not in made for key in left))
            )
            repeated = {key: run_ids[key] for key in made if key in run_ids}
            if alone or one.row.source != run_source or any(
                content_hash(run_ids[key].resource) != content_hash(rec.resource)
                for rec in converted.records
                if (key := (rec.resource["resourceType"], rec.resource["id"])) in repeated
            ):
                flush()
                run_source = one.row.source
                repeated = {}
            if alone:
                self._write_converted(conn, one.row, one)
                continue
            for rec in converted.records:
                key = (rec.resource["resourceType"], rec.resource["id"])
                if key not in repeated:
                    run.append(rec)
                    run_ids[key] = rec
        flush()

    def _write_converted(self, conn: Connection, row: Any, one: Prepared) -> None:
        """Stage what a v2 message converted into; delete what an earlier conversion of it
        made and this one no longer does (ids from older identity rules, a PR1 removed);
        carry out its patient merges (ADT^A40/A47) with a review entry of what moved."""
        assert one.converted is not None
        converted = one.converted
        if not converted.failed:
            made = {(r.resource["resourceType"], r.resource["id"]) for r in converted.records}
            for rtype, rid in staged_from(conn, row.source, converted_origin(row.resource_id)):
                if (rtype, rid) not in made:
                    self._delete(conn, row.source, rtype, rid)
        stage_records(conn, row.source, converted.records)
        for rtype, rid in converted.deleted:
            self._delete(conn, row.source, rtype, rid)
        for merged, surviving in converted.merges:
            report = merge_patient(conn, row.source, merged, surviving, staging_id=row.id)
            one.issues = [*one.issues, report.issue()]

    def _prepare(self, row: Any, verdicts: dict[str, list[Issue]] | None = None) -> Prepared:
        """Map or convert one staged record. Pure (no database), and never raises."""
        try:
            if row.content_type == HL7_CONTENT_TYPE:
                return self._prepare_hl7(row)
            return self._prepare_fhir(row, verdicts or {})
        except Exception as exc:  # the mapping engine reports its own problems; this is a bug
            log.error("mapping.internal_error", staging_id=row.id, error=type(exc).__name__)
            issue = Issue(
                "mapping.internal_error",
                f"mapping failed unexpectedly ({type(exc).__name__})",
                field=row.resource_type,
                rule="mapping",
            )
            return Prepared(row, "failed", [issue], "internal", remove=True)

    def _prepare_hl7(self, row: Any) -> Prepared:
        """A staged v2 message becomes FHIR records, staged when the batch is written.

        They get higher staging ids than this batch, so ``map_pending`` maps them next, and
        identical content from a resent or re-converted message is a no-op.
        """
        converted = convert_staged(row.raw, row.resource_id, self.app.site.tz)
        if converted.out_of_scope:
            return Prepared(row, "out_of_scope", [], "hl7v2", converted=converted)
        status = "failed" if converted.failed else "mapped"
        return Prepared(row, status, converted.issues, "hl7v2", converted=converted)

    def _prepare_fhir(self, row: Any, verdicts: dict[str, list[Issue]]) -> Prepared:
        try:
            resource = orjson.loads(row.raw)
        except orjson.JSONDecodeError:
            issue = Issue("intake.malformed_json", "staged content is not valid JSON", rule="intake")
            return Prepared(row, "invalid", [issue], "intake", remove=True)
        issues: list[Issue] = []
        verdict: tuple[str, list[Issue]] | None = None
        if self.strictness != "off":
            digest = _raw_digest(row.raw)
            known = verdicts.get(digest)
            if known is None:
                known = quick_validate(resource)
                verdict = (digest, known)
            issues = list(known)
            # Wrong-typed primitives are left out of what the mapping sees (named in issues).
            resource = as_mapped(resource, issues)
            if self.strictness == "strict" and any(i.severity == "error" for i in issues):
                return Prepared(row, "invalid", issues, "validation", remove=True, verdict=verdict)
        prepared = self._map_fhir(row, resource, issues)
        prepared.verdict = verdict
        return prepared

    def _map_fhir(self, row: Any, resource: dict[str, Any], issues: list[Issue]) -> Prepared:
        mapping = self.app.mappings.get(row.resource_type)
        if mapping is None:
            # Types we receive but do not map (Practitioner, Location, ...) are kept staged.
            return Prepared(row, "out_of_scope", issues, "")
        result = mapping.map(resource, self.app.site)
        if result.disposition == "mapped":
            issues = settle(issues)
        issues.extend(result.issues)
        if result.disposition == "mapped":
            out = {**result.row, "source": row.source, "id": row.resource_id, "staging_id": row.id}
            return Prepared(row, "mapped", issues, mapping.name, target=mapping.target, out=out)
        return Prepared(row, result.disposition, issues, mapping.name, remove=True)

    def _patients_of(self, conn: Connection, target: str, source: str, ids: list[str]) -> set[str]:
        table = MAPPING_TARGETS[target]
        if "patient_id" not in table.c:
            return set()
        rows = lookup(conn, table, ["patient_id"], {"source": source}, "id", ids)
        return {r.patient_id for r in rows if r.patient_id}

    def _remove_rows(self, conn: Connection, source: str, rtype: str, ids: list[str]) -> set[str]:
        """Delete registry rows a record no longer produces; returns the patients affected."""
        mapping = self.app.mappings.get(rtype)
        if mapping is None or not ids:
            return set()
        patients = self._patients_of(conn, mapping.target, source, ids)
        delete_mapped_rows(conn, mapping.target, source, ids)
        return patients

    def _assemble(self, conn: Connection, touched: dict[str, set[str]]) -> int:
        total = 0
        dmap = self.app.codemaps["spine-diagnoses"]
        today = datetime.now(self.app.settings.site.tz).date()  # procedures after it are planned
        for source, patients in touched.items():
            total += assemble_cases(conn, source, patients, dmap, self.app.settings.proms.timepoints, today)
        return total

    # -- re-processing ------------------------------------------------------------------

    def reprocess(
        self,
        *,
        resource_type: str | None = None,
        cause_id: str | None = None,
        staging_ids: Sequence[int] | None = None,
        source: str | None = None,
        everything: bool = False,
        map_now: bool = True,
    ) -> tuple[int, RunCounts]:
        """Send staged records back through mapping (after a mapping or code-map fix).

        With ``cause_id`` only the records of that cause are mapped (plus records their
        conversion staged, e.g. the FHIR resources of a re-converted HL7 v2 message), so the
        review UI's re-process costs the cause's size, not the whole pending backlog. Without
        it, the selected records are mapped together with anything else pending.
        ``staging_ids`` restricts the selection to those staged records (the review UI's
        "re-process the records selected"), mapped on their own like a cause's.
        """
        started = utcnow()
        with self.app.engine.begin() as conn:
            cond: list[ColumnElement[bool]] = [STAGING.c.status.notin_(["deleted"])]
            if staging_ids is not None:
                cond.append(STAGING.c.id.in_(list(staging_ids)))
            if not everything and not resource_type and not cause_id and staging_ids is None:
                cond.append(STAGING.c.status.in_(["failed", "invalid"]))
            if resource_type:
                cond.append(STAGING.c.resource_type == resource_type)
            if source:
                cond.append(STAGING.c.source == source)
            if cause_id:
                ids = select(MAPPING_ERRORS.c.staging_id).where(
                    MAPPING_ERRORS.c.cause_id == cause_id, MAPPING_ERRORS.c.status == "open"
                )
                cond.append(STAGING.c.id.in_(ids))
            # Input that never parsed stays invalid: re-mapping cannot fix it.
            cond.append(STAGING.c.content_type != "application/octet-stream")
            # The cause's records carry the mark's time, as do the records their conversion
            # stages (HL7 v2 → FHIR): mapping "pending since then" covers both, and nothing else.
            selected = mark_pending(conn, cond, started)
        if selected >= BULK_CHANGE:
            with self.app.engine.begin() as conn:
                refresh_statistics(conn)
        if not map_now:  # `registry-adapter worker` processes map them
            return selected, RunCounts()
        if cause_id is None and staging_ids is None:
            return selected, self.map_pending()
        return selected, self.map_pending(where=STAGING.c.updated_at >= started)


class _ReadBatch(NamedTuple):
    """A batch of pending records as read for mapping, with the validation verdicts already
    given on their bytes."""

    rows: list[StagedForMapping]
    verdicts: dict[str, list[Issue]]


def _raw_digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def stats(app: App) -> dict[str, int]:
    with app.engine.connect() as conn:

        def count(table: Any, *where: Any) -> int:
            return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())

        return {
            "staged": count(STAGING),
            "pending": count(STAGING, STAGING.c.status == "pending"),
            "patients": count(PATIENTS),
            "encounters": count(ENCOUNTERS),
            "procedures": count(PROCEDURES),
            "conditions": count(CONDITIONS),
            "cases": count(CASES, CASES.c.status == "active"),
            "prom_responses": count(PROM_RESPONSES),
            "errors_open": count(MAPPING_ERRORS, MAPPING_ERRORS.c.status == "open"),
            "out_of_scope": count(STAGING, STAGING.c.status == "out_of_scope"),
            "excluded": count(STAGING, STAGING.c.status == "excluded"),
            "failed": count(STAGING, STAGING.c.status.in_(["failed", "invalid"])),
        }
