"""Sync from a real FHIR server (Medplum's router, tests/fhir_server) into the registry store:
first full, then incremental after new, updated and deleted resources; REST and Bulk."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from registry_adapter.app import App
from registry_adapter.pipeline import Pipeline, stats
from registry_adapter.queries import list_cases
from registry_adapter.sources import build_source
from tests.conftest import SAMPLE_FEED

TYPES = ["Patient", "Encounter", "Procedure", "Condition", "QuestionnaireResponse"]


def _feed() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(SAMPLE_FEED.glob("*")):
        if path.suffix == ".ndjson":
            for line in path.read_text().splitlines():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # the sample's deliberately broken line
        else:
            out.extend(e["resource"] for e in json.loads(path.read_text())["entry"])
    return out


def _sync(app: App) -> Any:
    (cfg,) = app.settings.sources
    return Pipeline(app).ingest(build_source(cfg, app))


def _cases(app: App) -> dict[str, dict[str, Any]]:
    with app.engine.connect() as conn:
        return {c["procedure_id"]: c for c in list_cases(conn, include_removed=True)}


@pytest.mark.parametrize("kind", ["fhir_rest", "fhir_bulk"])
def test_full_then_incremental_sync_from_a_real_fhir_server(
    fhir: Any, make_app: Callable[..., App], db_url: str, tmp_path: Path, kind: str
) -> None:
    fhir.seed(_feed())
    source: dict[str, Any] = {
        "name": "ehr",
        "type": kind,
        "base_url": fhir.base_url,
        "resource_types": TYPES,
        "http": {"retries": 2, "backoff_factor": 0.01},
    }
    if kind == "fhir_rest":
        source |= {"page_size": 25, "overlap_seconds": 0, "detect_deletes": True}
    else:
        source |= {"work_dir": str(tmp_path / "bulk"), "poll_interval_seconds": 0.05}
    app = make_app(db_url, sources=[source])
    first = _sync(app)
    assert first.outcome == "succeeded", first
    s = stats(app)
    assert (s["patients"], s["cases"], s["prom_responses"]) == (40, 40, 73)
    assert _cases(app)["proc-0001"]["category"] == "lumbar_discectomy"

    # The hospital changes things: a new surgery, a corrected category, a withdrawn record.
    new_proc = {
        "resourceType": "Procedure",
        "id": "proc-new-1",
        "status": "completed",
        "subject": {"reference": "Patient/pat-0003"},
        "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "22551"}]},
        "performedDateTime": "2025-06-02T09:00:00-05:00",
    }
    fhir.create(new_proc)
    first_proc = next(r for r in _feed() if r["id"] == "proc-0001")
    fhir.update(
        {**first_proc, "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "63047"}]}}
    )
    if kind == "fhir_rest":
        fhir.delete("Procedure", "proc-0002")
    second = _sync(app)
    assert second.outcome == "succeeded"
    cases = _cases(app)
    assert cases["proc-new-1"]["module"] == "cervical" and cases["proc-new-1"]["category"] == "acdf"
    assert cases["proc-0001"]["category"] == "lumbar_laminectomy"
    if kind == "fhir_rest":
        # Incremental: only what changed came back (plus references fetched once).
        assert (
            second.counts.staged_new == 1 and second.counts.staged_updated == 1 and second.counts.deleted == 1
        )
        assert cases["proc-0002"]["status"] == "removed"
        assert stats(app)["cases"] == 40
    else:
        assert stats(app)["cases"] == 41
    third = _sync(app)
    assert third.counts.staged_new == 0 and third.counts.staged_updated == 0
