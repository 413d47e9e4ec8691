"""Mapping in worker processes: batches of staged rows in, prepared rows out.

Mapping a staged record (parse, validate, map, convert v2) is pure CPU and needs no database,
while writing needs the one transaction per batch. With ``mapping_workers: N`` (N > 1) the
pipeline hands each batch to a pool of N processes and writes the results in its own process,
in staging order, while the pool maps the next batches: on two cores the mapping of batch k+1
overlaps the writes of batch k. Workers are started fresh (``spawn``: no inherited database
connections, locks or threads) and build the same App from the same settings, so they map as
the calling process would. A pool is only started for a backlog of several batches; its start
(~1 s: imports and mapping files) would cost more than it saves on a small one.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

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


def _start_worker(settings: Settings, db_url: str) -> None:
    global _WORKER
    from registry_adapter.app import build_app
    from registry_adapter.pipeline import Pipeline

    _WORKER = Pipeline(build_app(settings, db_url))
    _WORKER.app.mappings  # noqa: B018 - compile the mappings now, not inside the first batch


def prepare_batch(rows: Sequence[StagedForMapping], verdicts: dict[str, list[Issue]]) -> list[Prepared]:
    """Runs in a worker: ``Pipeline._prepare`` for each row."""
    assert _WORKER is not None, "worker not started"
    return [_WORKER._prepare(row, verdicts) for row in rows]


@contextmanager
def mapping_pool(pipeline: Pipeline, workers: int) -> Iterator[Executor | None]:
    """A pool of ``workers`` mapping processes (None for 1: map in this process)."""
    if workers <= 1:
        yield None
        return
    ctx = multiprocessing.get_context("spawn")
    app = pipeline.app
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_start_worker, initargs=(app.settings, app.db_url)
    ) as pool:
        yield pool


def as_plain(row: Any) -> StagedForMapping:
    return StagedForMapping(
        row.id, row.source, row.resource_type, row.resource_id, row.content_type, row.content_hash,
        bytes(row.raw),
    )
