"""A resource deleted on a real FHIR server (tests/fhir_server) is found by a full sync or a
full Bulk export without type-level history; its case is withdrawn and its reminders end."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from adapters.base import SourceContext
from registry_adapter.app import App
from registry_adapter.pipeline import Pipeline
from registry_adapter.queries import list_cases
from registry_adapter.sources import build_source
from registry_store.tables import REMINDERS, STAGING
from scheduler.clock import at_local
from scheduler.dispatcher import Dispatcher
from tests.registry_adapter.test_fhir_sync import TYPES, _feed


def _app(make_app: Callable[..., App], fhir: Any, tmp_path: Path, kind: str, **extra: Any) -> App:
    source: dict[str, Any] = {
        "name": "ehr",
        "type": kind,
        "base_url": fhir.base_url,
        "resource_types": TYPES,
        "http": {"retries": 0, "backoff_factor": 0.01},
        **extra,
    }
    if kind == "fhir_bulk":
        source |= {"work_dir": str(tmp_path / "bulk"), "poll_interval_seconds": 0.05}
    return make_app(sources=[source], reminders={"enabled": True, "channels": ["worklist"]})


def _sync(app: App, *, full: bool = False) -> Any:
    (cfg,) = app.settings.sources
    return Pipeline(app).ingest(build_source(cfg, app), SourceContext(full=full))


def _case(app: App, procedure: str) -> dict[str, Any]:
    with app.engine.connect() as conn:
        return next(c for c in list_cases(conn, include_removed=True) if c["procedure_id"] == procedure)


def _reminder_statuses(app: App, case_id: str) -> set[tuple[str, str | None]]:
    with app.engine.connect() as conn:
        query = select(REMINDERS.c.status, REMINDERS.c.cancel_reason).where(REMINDERS.c.case_id == case_id)
        rows = conn.execute(query)
        return {(r.status, r.cancel_reason) for r in rows}


def _staged_status(app: App, rtype: str, rid: str) -> str:
    with app.engine.connect() as conn:
        return str(
            conn.execute(
                select(STAGING.c.status).where(STAGING.c.resource_type == rtype, STAGING.c.resource_id == rid)
            ).scalar_one()
        )


def test_full_rest_sync_finds_deletions_and_withdraws_the_case(
    fhir: Any, make_app: Callable[..., App], tmp_path: Path
) -> None:
    fhir.seed(_feed())
    app = _app(make_app, fhir, tmp_path, "fhir_rest", page_size=50)
    assert _sync(app).outcome == "succeeded"
    clock = at_local(date(2024, 7, 1), 10, app.settings.site.tz)
    Dispatcher(app, clock).plan()
    case_id = _case(app, "proc-0003")["case_id"]
    assert ("scheduled", None) in _reminder_statuses(app, case_id)

    fhir.delete("Procedure", "proc-0003")
    fhir.delete("Condition", next(r["id"] for r in _feed() if r["resourceType"] == "Condition"))
    # Incremental, no history: nothing can tell the deletion yet.
    assert _sync(app).counts.deleted == 0
    assert _case(app, "proc-0003")["status"] == "active"
    full = _sync(app, full=True)
    assert full.outcome == "succeeded" and full.counts.deleted == 2
    assert _staged_status(app, "Procedure", "proc-0003") == "deleted"
    case = _case(app, "proc-0003")
    assert (case["status"], case["status_reason"]) == ("withdrawn", "deleted at source")
    Dispatcher(app, clock).plan()
    assert {s for s, _ in _reminder_statuses(app, case_id)} <= {"cancelled", "missing", "completed"}
    assert ("cancelled", "case_withdrawn") in _reminder_statuses(app, case_id)
    # Nothing else was taken for deleted, and a second full sync finds nothing more.
    assert _sync(app, full=True).counts.deleted == 0
    with app.engine.connect() as conn:
        active = [c for c in list_cases(conn) if c["status"] == "active"]
    assert len(active) == 39


def test_a_server_without_type_history_does_not_fail_the_source(
    fhir: Any, make_app: Callable[..., App], tmp_path: Path
) -> None:
    fhir.seed(_feed())
    app = _app(make_app, fhir, tmp_path, "fhir_rest", page_size=50, detect_deletes=True)
    assert _sync(app).outcome == "succeeded"
    fhir.delete("Procedure", "proc-0003")
    fhir.fault(r"/_history", "status", times=100, status=404)
    incremental = _sync(app)
    assert incremental.outcome == "succeeded" and incremental.counts.deleted == 0
    assert _sync(app, full=True).counts.deleted == 1
    assert _case(app, "proc-0003")["status_reason"] == "deleted at source"


def test_full_bulk_export_finds_deletions(fhir: Any, make_app: Callable[..., App], tmp_path: Path) -> None:
    fhir.seed(_feed())
    app = _app(make_app, fhir, tmp_path, "fhir_bulk")
    assert _sync(app).outcome == "succeeded"
    fhir.delete("Procedure", "proc-0003")
    result = _sync(app, full=True)
    assert result.outcome == "succeeded" and result.counts.deleted == 1
    case = _case(app, "proc-0003")
    assert (case["status"], case["status_reason"]) == ("withdrawn", "deleted at source")


@pytest.mark.parametrize("kind", ["fhir_rest"])
def test_incomplete_full_sync_deletes_nothing(
    fhir: Any, make_app: Callable[..., App], tmp_path: Path, kind: str
) -> None:
    fhir.seed(_feed())
    app = _app(make_app, fhir, tmp_path, kind, page_size=10)
    assert _sync(app).outcome == "succeeded"
    fhir.delete("Procedure", "proc-0003")
    fhir.fault(r"^/Procedure\?", "malformed", times=1)
    partial = _sync(app, full=True)
    assert partial.outcome == "partial" and partial.counts.deleted == 0
    assert _case(app, "proc-0003")["status"] == "active"
