"""REST faults through the real pipeline and database: a real FHIR server (tests/fhir_server)
misbehaves, ``Pipeline.ingest`` stages what it can, the run row tells what happened, and a
resumed sync finishes the job with nothing lost and nothing staged twice."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import requests
from sqlalchemy import select

from registry_adapter.app import App
from registry_adapter.pipeline import Pipeline, RunResult
from registry_adapter.sources import build_source
from registry_store.tables import STAGING
from registry_store.tables import SYNC_RUNS as RUNS
from tests.adapters.spine_data import keys, spine_cohort
from tests.fhir_server.fixture import FhirTestServer

# The second page of a Procedure search with _count=3 (the server's opaque next link).
PAGE2 = r"^/Procedure\?_getpages=.*_getpagesoffset=3\b"
RETRIES = 2


def _app(make_app: Callable[..., App], db_url: str, fhir: FhirTestServer) -> App:
    source = {
        "name": "ehr",
        "type": "fhir_rest",
        "base_url": fhir.base_url,
        "page_size": 3,
        "overlap_seconds": 60,
        "http": {"retries": RETRIES, "backoff_factor": 0.01, "backoff_max": 0.1, "backoff_jitter": 0.01},
    }
    return make_app(db_url, sources=[source])


def _sync(app: App) -> RunResult:
    (cfg,) = app.settings.sources
    return Pipeline(app).ingest(build_source(cfg, app))


def _staged(app: App) -> list[tuple[str, str, str]]:
    with app.engine.connect() as conn:
        rows = conn.execute(
            select(STAGING.c.resource_type, STAGING.c.resource_id, STAGING.c.status).where(
                STAGING.c.source == "ehr"
            )
        ).all()
    return [(r.resource_type, r.resource_id, r.status) for r in rows]


def _resources(app: App) -> Counter[str]:
    """Staged resources (not error rows), each ``Type/id`` with how often it is staged."""
    return Counter(f"{t}/{i}" for t, i, s in _staged(app) if s != "invalid")


def _runs(app: App) -> list[dict[str, Any]]:
    with app.engine.connect() as conn:
        rows = conn.execute(select(RUNS).where(RUNS.c.source == "ehr").order_by(RUNS.c.id)).all()
    return [dict(r._mapping) for r in rows]


@pytest.fixture
def data(fhir: FhirTestServer) -> list[dict[str, Any]]:
    resources = spine_cohort(4, with_meta=True)  # 6 procedures: two pages of 3
    fhir.seed(resources, preserve_meta=True)
    return resources


def test_connection_cut_mid_page_fails_the_run_and_a_resumed_sync_finishes(
    fhir: FhirTestServer, make_app: Callable[..., App], db_url: str, data: list[dict[str, Any]]
) -> None:
    app = _app(make_app, db_url, fhir)
    # More cuts than retries, 200 bytes into the second Procedure page.
    fhir.fault(PAGE2, "cut", times=RETRIES + 1, partial_bytes=200)

    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        _sync(app)

    [failed] = _runs(app)
    assert failed["outcome"] == "failed" and failed["finished_at"] is not None
    assert failed["error"].startswith("ChunkedEncodingError: ('Connection broken: IncompleteRead")
    staged = _resources(app)
    # Patients and Encounters and the first Procedure page were committed; nothing twice.
    assert staged and set(staged) < keys(data) and max(staged.values()) == 1
    assert {k for k in keys(data) if k.startswith(("Patient/", "Encounter/"))} <= set(staged)
    assert not {k for k in staged if k.startswith("Condition/")}  # stopped before Condition

    resumed = _sync(app)

    assert resumed.outcome == "succeeded"
    assert _resources(app) == Counter(keys(data))  # everything, each once
    assert not [row for row in _staged(app) if row[2] in ("pending", "invalid")]
    assert resumed.counts.staged_new == len(data) - len(staged)
    assert resumed.counts.staged_updated == 0  # the overlap's re-reads were no-ops
    assert [r["outcome"] for r in _runs(app)] == ["failed", "succeeded"]


def test_malformed_page_stops_one_type_and_the_run_is_marked_partial(
    fhir: FhirTestServer, make_app: Callable[..., App], db_url: str, data: list[dict[str, Any]]
) -> None:
    app = _app(make_app, db_url, fhir)
    fhir.fault(PAGE2, "malformed", times=1)

    partial = _sync(app)

    assert partial.outcome == "partial" and partial.failure is not None
    [failed] = _runs(app)
    assert failed["outcome"] == "partial"
    assert "malformed page: Procedure at /Procedure page 2" in failed["error"]
    # What was read is mapped in the same run, not left pending until the next one.
    assert not [row for row in _staged(app) if row[2] == "pending"]
    staged = _resources(app)
    # The types after Procedure were still synced and committed.
    assert {k for k in keys(data) if k.startswith(("Condition/", "QuestionnaireResponse/"))} <= set(staged)
    procedures = sorted(
        (r["meta"]["lastUpdated"], f"Procedure/{r['id']}") for r in data if r["resourceType"] == "Procedure"
    )
    assert {k for k in staged if k.startswith("Procedure/")} == {k for _, k in procedures[:3]}
    assert max(staged.values()) == 1
    # The bad page itself is kept as an invalid staging row (nothing received is lost).
    [bad] = [row for row in _staged(app) if row[2] == "invalid"]
    assert bad[0] == "Procedure"

    resumed = _sync(app)

    assert resumed.outcome == "succeeded"
    assert _resources(app) == Counter(keys(data))
    assert resumed.counts.staged_new == 3 and resumed.counts.staged_updated == 0
    assert not [row for row in _staged(app) if row[2] == "pending"]  # all mapped now
    assert [r["outcome"] for r in _runs(app)] == ["partial", "succeeded"]


def test_throttled_with_retry_after_is_waited_out_in_one_run(
    fhir: FhirTestServer, make_app: Callable[..., App], db_url: str, data: list[dict[str, Any]]
) -> None:
    app = _app(make_app, db_url, fhir)
    fhir.fault(PAGE2, "429", times=1, retry_after=1)

    result = _sync(app)

    assert result.outcome == "succeeded" and result.counts.staged_new == len(data)
    assert _resources(app) == Counter(keys(data))
    statuses = [
        r["status"]
        for r in fhir.requests()
        if "_getpagesoffset=3" in r["url"] and r["url"].startswith("/Procedure")
    ]
    assert statuses == [429, 200]
    [run] = _runs(app)
    assert run["outcome"] == "succeeded" and run["error"] is None
