"""The case queue is drained a chunk at a time: every queued patient is assembled once, the
registry ends as a whole-queue drain leaves it, and a patient whose assembly fails stays
queued without stopping (or looping) the drain."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from sqlalchemy import select

from registry_adapter.app import App
from registry_adapter.pipeline import Pipeline
from registry_store.case_queue import enqueue
from registry_store.tables import CASE_QUEUE, CASES
from tests.registry_adapter.test_fast_path_equivalence import _import, _snapshot, make_feed


def _queue_every_patient(app: App) -> list[tuple[str, str]]:
    with app.engine.begin() as conn:
        rows = conn.execute(select(CASES.c.source, CASES.c.patient_id))
        pairs = sorted({(r.source, r.patient_id) for r in rows})
        by_source: dict[str, set[str]] = {}
        for source, patient in pairs:
            by_source.setdefault(source, set()).add(patient)
        enqueue(conn, by_source)
    return pairs


def _still_queued(app: App) -> list[tuple[str, str]]:
    with app.engine.connect() as conn:
        rows = conn.execute(select(CASE_QUEUE.c.source, CASE_QUEUE.c.patient_id))
        return [(r.source, r.patient_id) for r in rows]


def test_drain_in_small_chunks_assembles_every_queued_patient(
    make_app: Callable[..., App], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    _import(app, make_feed(tmp_path))
    before = _snapshot(app)
    pairs = _queue_every_patient(app)
    assert len(pairs) > 7
    assembled: list[tuple[str, str]] = []
    pipeline = Pipeline(app)
    real = pipeline._assemble_pairs

    def spy(chunk: Sequence[tuple[str, str]]) -> int:
        assembled.extend(chunk)
        return real(chunk)

    monkeypatch.setattr(pipeline, "_assemble_pairs", spy)
    pipeline.assemble_queued(chunk=3)
    assert assembled == pairs  # each once, in key order
    assert _still_queued(app) == []
    assert _snapshot(app) == before


def test_a_patient_whose_assembly_fails_stays_queued(
    make_app: Callable[..., App], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    _import(app, make_feed(tmp_path))
    pairs = _queue_every_patient(app)
    poison = pairs[len(pairs) // 2]
    pipeline = Pipeline(app)
    real = pipeline._assemble

    def failing(conn, touched):  # type: ignore[no-untyped-def]
        if poison[1] in touched.get(poison[0], set()):
            raise RuntimeError("a bug this patient's data trips")
        return real(conn, touched)

    monkeypatch.setattr(pipeline, "_assemble", failing)
    pipeline.assemble_queued(chunk=3)
    assert _still_queued(app) == [poison]
