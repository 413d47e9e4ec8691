"""Sync from a real FHIR server (Medplum's router, tests/fhir_server) into the registry store:
first full, then incremental after new, updated and deleted resources; REST and Bulk."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import select

from registry_adapter.app import App, build_app
from registry_adapter.cli import cli
from registry_adapter.config import parse_settings
from registry_adapter.pipeline import Pipeline, stats
from registry_adapter.queries import list_cases
from registry_adapter.sources import build_source
from registry_store.tables import STAGING
from tests.adapters.spine_data import keys, spine_cohort
from tests.conftest import SAMPLE_FEED, base_config

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


def _staged_identities(app: App) -> tuple[int, int]:
    """Staging rows of the source, and distinct resources among them."""
    with app.engine.connect() as conn:
        rows = conn.execute(
            select(STAGING.c.resource_type, STAGING.c.resource_id).where(STAGING.c.source == "ehr")
        ).all()
    return len(rows), len({(r.resource_type, r.resource_id) for r in rows})


# overlap 0 re-reads only the watermark's own instant; 600 s re-reads everything this test
# wrote (it all happened within the window), which staging must recognise as unchanged.
@pytest.mark.parametrize(("kind", "overlap"), [("fhir_rest", 0), ("fhir_rest", 600), ("fhir_bulk", None)])
def test_full_then_incremental_sync_from_a_real_fhir_server(
    fhir: Any, make_app: Callable[..., App], db_url: str, tmp_path: Path, kind: str, overlap: int | None
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
        source |= {"page_size": 25, "overlap_seconds": overlap, "detect_deletes": True}
    else:
        source |= {"work_dir": str(tmp_path / "bulk"), "poll_interval_seconds": 0.05}
    app = make_app(db_url, sources=[source])
    first = _sync(app)
    assert first.outcome == "succeeded", first
    s = stats(app)
    assert (s["patients"], s["cases"], s["prom_responses"]) == (40, 40, 78)
    assert _cases(app)["proc-0001"]["category"] == "lumbar_discectomy"
    staged_first, distinct_first = _staged_identities(app)
    assert staged_first == distinct_first == first.counts.staged_new + first.counts.invalid

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
        gone = cases["proc-0002"]
        assert (gone["status"], gone["status_reason"]) == ("withdrawn", "deleted at source")
        assert stats(app)["cases"] == 40
        if overlap:
            # The window brought everything back; none of it was staged again or changed.
            # (all but proc-0001, updated, and proc-0002, deleted).
            assert second.counts.unchanged == staged_first - 2
        # Nothing duplicated: one staging row per resource, one more for the new Procedure.
        assert _staged_identities(app) == (staged_first + 1, distinct_first + 1)
    else:
        assert stats(app)["cases"] == 41
    third = _sync(app)
    assert third.counts.staged_new == 0 and third.counts.staged_updated == 0
    if kind == "fhir_rest":
        assert _staged_identities(app) == (staged_first + 1, distinct_first + 1)
        assert stats(app)["cases"] == 40 and _cases(app)["proc-0002"]["status"] == "withdrawn"
        if overlap:  # the window re-read everything once more, all of it unchanged
            assert third.counts.unchanged == third.counts.received == staged_first


@pytest.mark.parametrize(
    ("since", "instant"),
    [
        ("2023-12-31T18:29", "2023-12-31T18:29:00-06:00"),  # site-local (America/Chicago)
        ("2024-01-01T00:29:00Z", "2023-12-31T18:29:00-06:00"),  # UTC, shown site-local
        ("2024-01-01", "2024-01-01T00:00:00-06:00"),  # a date: site-local midnight
        ("2024-07-01T08:30:00.250+02:00", "2024-07-01T01:30:00.250-05:00"),  # summer time
    ],
)
def test_sync_since_is_a_site_local_fhir_instant(
    fhir: Any, make_app: Callable[..., App], tmp_path: Path, since: str, instant: str
) -> None:
    data = spine_cohort(4, with_meta=True)  # lastUpdated 2024-01-01T00:10Z .. 00:46Z
    fhir.seed(data, preserve_meta=True)
    config = base_config(
        tmp_path,
        sources=[
            {
                "name": "ehr",
                "type": "fhir_rest",
                "base_url": fhir.base_url,
                "resource_types": TYPES,
                "fetch_references": False,
            }
        ],
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    migrated = build_app(parse_settings(config))
    migrated.upgrade_db()
    migrated.engine.dispose()

    result = CliRunner().invoke(
        cli, ["--config", str(tmp_path / "config.yaml"), "sync", "--json", "--since", since]
    )

    assert result.exit_code == 0, result.output
    [summary] = json.loads(result.stdout)
    searches = [r["url"] for r in fhir.requests() if r["url"].startswith("/Procedure?")]
    assert searches and all(f"_lastUpdated=ge{instant.replace('+', '%2B')}" in u for u in searches)
    after = {
        f"{r['resourceType']}/{r['id']}"
        for r in data
        if r["meta"]["lastUpdated"]
        >= datetime.fromisoformat(instant)
        .astimezone(UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    }
    assert summary["received"] == len(after)
    if since.startswith("2023-12-31T18:29"):
        assert after == keys(data) - keys(spine_cohort(2, with_meta=True))  # patients 3 and 4


@pytest.mark.parametrize("since", ["yesterday", "2024-13-01", "2024-01-01T25:00", ""])
def test_sync_since_rejects_a_bad_value_clearly(tmp_path: Path, since: str) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(base_config(tmp_path)))

    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "config.yaml"), "sync", "--since", since])

    assert result.exit_code == 2
    assert "Invalid value for '--since'" in result.output
    assert "is not a date (2026-01-31) or a date-time" in result.output
