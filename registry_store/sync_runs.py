"""Writes to the record of pulls (``sync_runs``) and to each source's committed state.

The pipeline decides when a run starts and how it ends; these functions store that. A
source's state (watermarks, cursors) is saved in the same transaction as the records staged
up to its checkpoint, so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Connection

from registry_store.db import upsert
from registry_store.tables import SOURCE_STATE, SYNC_RUNS
from registry_store.timeutil import utcnow

INTERRUPTED = "interrupted: the process running it stopped (killed or crashed)"


def start_run(conn: Connection, *, source: str, kind: str, watermark: Mapping[str, Any]) -> int:
    """A run begins (``running``); returns its id."""
    return int(
        conn.execute(
            SYNC_RUNS.insert()
            .values(
                source=source,
                kind=kind,
                started_at=utcnow(),
                outcome="running",
                counts={},
                watermark=dict(watermark),
            )
            .returning(SYNC_RUNS.c.id)
        ).scalar_one()
    )


def finish_run(
    conn: Connection,
    run_id: int,
    *,
    outcome: str,
    counts: Mapping[str, int],
    watermark: Mapping[str, Any] | None,
    error: str | None,
) -> None:
    """A run ended with ``outcome`` (ok, partial, failed, interrupted)."""
    conn.execute(
        update(SYNC_RUNS)
        .where(SYNC_RUNS.c.id == run_id)
        .values(
            finished_at=utcnow(),
            outcome=outcome,
            counts=dict(counts),
            watermark=None if watermark is None else dict(watermark),
            error=error,
        )
    )


def mark_runs_interrupted(conn: Connection, source: str) -> int:
    """Runs of ``source`` still ``running`` become ``interrupted``. Call only while holding
    the source's sync lease (or knowing its holder is dead): then no live process runs them."""
    return int(
        conn.execute(
            update(SYNC_RUNS)
            .where(SYNC_RUNS.c.source == source, SYNC_RUNS.c.outcome == "running")
            .values(outcome="interrupted", finished_at=utcnow(), error=INTERRUPTED)
        ).rowcount
    )


def save_source_state(conn: Connection, source: str, state: Mapping[str, Any]) -> None:
    """Replace the source's committed state (watermarks, cursors)."""
    row = {"source": source, "state": dict(state), "updated_at": utcnow()}
    upsert(conn, SOURCE_STATE, [row], keys=["source"])
