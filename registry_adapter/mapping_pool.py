"""Mapping in worker processes: batches of staged rows in, prepared rows out.

Mapping a staged record (parse, validate, map, convert v2) is pure CPU and needs no database,
while writing needs the one transaction per batch. With ``mapping_workers: N`` (N > 1) the
pipeline hands each batch to N - 1 mapping processes and writes the results in its own process,
in staging order, while they map the next batches: on two cores the writes of batch k overlap
the mapping of batch k+1 (the calling process is the N-th worker: mapping is ~55 % of an
import's CPU and the writes most of the rest, so one child keeps both cores busy).

On Linux the children are ``fork``ed from the calling process once its App and compiled
mappings are loaded (and frozen out of the cyclic GC, so copy-on-write pages stay shared):
starting one costs milliseconds instead of the ~1-3 s CPU a ``spawn``ed one spends re-importing
and rebuilding the App. A forked child never touches the parent's database connections (its
initializer drops the inherited pool without closing the parent's sockets) and maps nothing but
what it is sent. Where ``fork`` is not available the children are ``spawn``ed and build the same
App from the same settings. A pool is only started for a backlog of several batches.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:
    from registry_adapter.config import Settings
    from registry_adapter.pipeline import Pipeline, Prepared
    from registry_store.errors import Issue


class StagedForMapping(NamedTuple):
    """What mapping reads of a staged row (a plain tuple: it crosses process boundaries)."""

    id: int
    source: str
    resource_type: str
    resource_id: str
    content_type: str
    content_hash: str
    raw: bytes


_WORKER: Pipeline | None = None


def usable_cores() -> int:
    """Cores this process may run on (its affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_workers(setting: int | Literal["auto"]) -> int:
    """``mapping_workers`` as a number: ``auto`` is 2 (one mapping child and the writing
    process) on a host with two or more usable cores, else 1."""
    if setting == "auto":
        return 2 if usable_cores() >= 2 else 1
    return setting


def _start_spawned(settings: Settings, db_url: str) -> None:
    global _WORKER
    from registry_adapter.app import build_app
    from registry_adapter.pipeline import Pipeline

    _WORKER = Pipeline(build_app(settings, db_url))
    _WORKER.app.mappings  # noqa: B018 - compile the mappings now, not inside the first batch


def _start_forked() -> None:
    # The inherited pool's connections are the parent's sockets: forget them without closing
    # (closing would end the parent's sessions). Mapping needs no database anyway.
    assert _WORKER is not None, "forked without a pipeline"
    _WORKER.app.engine.dispose(close=False)


def prepare_batch(rows: Sequence[StagedForMapping], verdicts: dict[str, list[Issue]]) -> list[Prepared]:
    """Runs in a worker: ``Pipeline._prepare`` for each row. The rows go back without their
    staged row (the caller has it: ``attach_rows``), so the raw bytes cross only once."""
    assert _WORKER is not None, "worker not started"
    prepared = [_WORKER._prepare(row, verdicts) for row in rows]
    for p in prepared:
        p.row = None
    return prepared


def attach_rows(prepared: list[Prepared], rows: Sequence[StagedForMapping]) -> list[Prepared]:
    for p, row in zip(prepared, rows, strict=True):
        p.row = row
    return prepared


@contextmanager
def mapping_pool(pipeline: Pipeline, workers: int) -> Iterator[Executor | None]:
    """A pool of ``workers - 1`` mapping processes (None for 1: map in this process)."""
    global _WORKER
    if workers <= 1:
        yield None
        return
    app = pipeline.app
    if "fork" in multiprocessing.get_all_start_methods():
        app.mappings  # noqa: B018 - compiled once here, shared by the children
        # Everything loaded so far lives as long as the pool: frozen, the children's collectors
        # never write to (and so never copy) those pages.
        gc.freeze()
        _WORKER = pipeline
        try:
            with ProcessPoolExecutor(
                workers - 1, mp_context=multiprocessing.get_context("fork"), initializer=_start_forked
            ) as pool:
                yield pool
        finally:
            _WORKER = None
        return
    with ProcessPoolExecutor(
        workers - 1, mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_spawned, initargs=(app.settings, app.db_url),
    ) as pool:
        yield pool


def as_plain(row: Any) -> StagedForMapping:
    return StagedForMapping(
        row.id, row.source, row.resource_type, row.resource_id, row.content_type, row.content_hash,
        bytes(row.raw),
    )
