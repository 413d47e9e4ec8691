"""The one path for data, end to end on SQLite and PostgreSQL: the bundled feed into cases."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from adapters.base import Checkpoint, Deleted, Item, Record, SourceContext
from adapters.files import FilesSource
from mappings.codemaps import BUNDLED as BUNDLED_CODEMAPS
from mappings.codemaps import load_codemap
from registry_adapter.app import App
from registry_adapter.pipeline import Pipeline, stats
from registry_adapter.queries import list_cases, list_causes
from registry_store.tables import CASES
from registry_store.tables import PROM_RESPONSES as PROMS
from tests.conftest import SAMPLE_FEED, table_count

EXPECTED_CAUSES = {
    ("codemap.unmapped_code", "cpt|22899"): 3,
    ("codemap.unmapped_code", "icd10cm|M48.9"): 2,
    ("case.no_index_procedure", "22614"): 1,
    ("intake.malformed_json", None): 1,
    ("mapping.required_missing", None): 1,
    ("prom.unknown_instrument", "http://example.org/Questionnaire/hospital-satisfaction-survey"): 1,
    # A vendor form with numeric linkIds, until a site teaches it (proms.instruments).
    ("prom.unknown_instrument", "https://ehr.lakeside.example/Questionnaire/back-form-7"): 1,
    # Answered but too incomplete to score: stored, with an error and the warning it explains.
    ("prom.not_scorable", "odi"): 1,
    ("prom.too_many_missing", "odi"): 1,
}


def _sync(app: App, path: Path = SAMPLE_FEED, name: str = "sample", **ctx: Any) -> Any:
    return Pipeline(app).ingest(FilesSource(name, [path]), SourceContext(**ctx))


def _cases(app: App) -> dict[str, dict[str, Any]]:
    with app.engine.connect() as conn:
        return {c["procedure_id"]: c for c in list_cases(conn)}


def _causes(app: App) -> dict[tuple[str, str | None], int]:
    with app.engine.connect() as conn:
        return {(c["code"], c["value"]): c["count"] for c in list_causes(conn)}


def test_sample_feed_becomes_cases_diagnoses_and_scored_proms(app: App) -> None:
    result = _sync(app)
    assert result.outcome == "succeeded"
    assert result.counts.received == 271 and result.counts.invalid == 1
    s = stats(app)
    assert (s["patients"], s["encounters"], s["cases"], s["prom_responses"]) == (40, 40, 40, 78)
    assert s["out_of_scope"] == 2 and s["excluded"] == 1
    assert _causes(app) == EXPECTED_CAUSES

    cases = _cases(app)
    first = cases["proc-0001"]
    assert (first["module"], first["category"], first["surgery_date"]) == (
        "lumbar",
        "lumbar_discectomy",
        "2024-03-15",
    )
    assert (first["admission_date"], first["discharge_date"]) == ("2024-03-15", "2024-03-19")
    assert first["diagnoses"] == ["radiculopathy"] and first["diagnosis_codes"] == ["M51.16"]
    # One Procedure per billed code: grouped into one case anchored on the index code.
    per_code = cases["proc-0005-0"]
    assert per_code["procedure_ids"] == ["proc-0005-0", "proc-0005-1"]
    assert per_code["category"] == "alif_lateral" and per_code["instrumented"] is True
    modules = {c["module"] for c in cases.values()}
    assert modules == {"lumbar", "cervical"}
    assert "proc-error-1" not in cases and "proc-knee-1" not in cases

    with app.engine.connect() as conn:
        proms = {r.id: r for r in conn.execute(select(PROMS))}
    assert (proms["qr-0002-base"].timepoint, proms["qr-0002-base"].case_id) == (
        "baseline",
        "sample:proc-0002",
    )
    assert proms["qr-0001-90d"].timepoint == "90d" and proms["qr-0001-1y"].timepoint == "1y"
    assert (
        proms["qr-0001-1y-eq"].instrument == "eq5d5l" and proms["qr-0001-1y-eq"].scores["index"] is not None
    )
    assert 0 <= proms["qr-0001-90d"].scores["odi"] <= 100


def _snapshot(app: App) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    with app.engine.connect() as conn:
        for table in (
            "patients",
            "encounters",
            "procedures",
            "conditions",
            "prom_responses",
            "cases",
            "mapping_errors",
            "staging",
        ):
            rows = conn.execute(text(f"SELECT * FROM {table}")).mappings().all()
            drop = {"updated_at", "mapped_at", "last_seen", "received_at"}
            out[table] = sorted(tuple((k, str(v)) for k, v in r.items() if k not in drop) for r in rows)
    return out


def test_running_the_same_sync_again_changes_nothing(app: App) -> None:
    _sync(app)
    before = _snapshot(app)
    again = _sync(app, full=True)
    assert again.counts.received == 271
    assert (again.counts.staged_new, again.counts.staged_updated, again.counts.mapped) == (0, 0, 0)
    assert _snapshot(app) == before
    incremental = _sync(app)  # files unchanged since the last committed checkpoint
    assert incremental.counts.received == 0


class _Crashing:
    """Yields a real source's items, then dies after ``after`` checkpoints (a killed process)."""

    def __init__(self, inner: FilesSource, after: int):
        self.name = inner.name
        self.inner = inner
        self.after = after

    def read(self, ctx: SourceContext) -> Iterator[Item]:
        seen = 0
        for item in self.inner.read(ctx):
            yield item
            if isinstance(item, Checkpoint):
                seen += 1
                if seen == self.after:
                    raise ConnectionError("feed went away")


def test_a_killed_sync_resumes_where_it_stopped(
    app: App, make_app: Callable[..., App], tmp_path: Path
) -> None:
    with pytest.raises(ConnectionError):
        Pipeline(app).ingest(_Crashing(FilesSource("sample", [SAMPLE_FEED]), after=3), SourceContext())
    with app.engine.connect() as conn:
        run = conn.execute(text("SELECT outcome, error FROM sync_runs")).one()
    assert run.outcome == "failed" and "feed went away" in run.error
    staged_after_crash = table_count(app, "staging")
    assert 0 < staged_after_crash < 271
    resumed = _sync(app)
    # Files committed before the crash are not read again.
    assert resumed.counts.received == 271 - staged_after_crash
    reference = make_app(f"sqlite:///{tmp_path / 'reference.db'}")
    _sync(reference)
    assert stats(app) == stats(reference)
    assert _causes(app) == _causes(reference)


class _Events:
    name = "sample"

    def __init__(self, items: list[Item]):
        self.items = items

    def read(self, ctx: SourceContext) -> Iterator[Item]:
        yield from self.items
        yield Checkpoint({"events": True})


def test_cancelled_and_deleted_procedures_remove_their_cases(app: App) -> None:
    _sync(app)
    proc = json.loads((SAMPLE_FEED / "Procedure.ndjson").read_text().splitlines()[0])
    assert proc["id"] == "proc-0001"
    cancelled = {**proc, "status": "entered-in-error"}
    Pipeline(app).ingest(_Events([Record(cancelled, "test"), Deleted("Procedure", "proc-0002", "test")]))
    cases = _cases(app)
    assert "proc-0001" not in cases and "proc-0002" not in cases
    with app.engine.connect() as conn:
        removed = {
            r.procedure_id: (r.status, r.status_reason)
            for r in conn.execute(select(CASES).where(CASES.c.status != "active"))
        }
        staged = dict(
            conn.execute(
                text(
                    "SELECT resource_id, status FROM staging WHERE resource_id IN ('proc-0001', 'proc-0002')"
                )
            ).all()
        )
    assert removed == {
        "proc-0001": ("withdrawn", "procedure entered-in-error"),
        "proc-0002": ("withdrawn", "deleted at source"),
    }
    assert staged == {"proc-0001": "excluded", "proc-0002": "deleted"}
    # The PROMs of a removed case no longer point at it.
    with app.engine.connect() as conn:
        assert conn.execute(select(PROMS).where(PROMS.c.case_id == "sample:proc-0002")).first() is None
    # Restoring the procedure brings the case back.
    Pipeline(app).ingest(_Events([Record(proc, "test")]))
    assert _cases(app)["proc-0001"]["status"] == "active"


def test_fixing_a_code_map_and_reprocessing_clears_the_cause(
    make_app: Callable[..., App], db_url: str, tmp_path: Path
) -> None:
    maps = tmp_path / "site-codemaps"
    shutil.copytree(BUNDLED_CODEMAPS, maps)
    app = make_app(db_url, mappings={"codemaps": str(maps)})
    _sync(app)
    cause = next(c for c in _causes_full(app) if c["value"] == "cpt|22899")
    assert cause["count"] == 3 and stats(app)["cases"] == 40
    cmap = load_codemap(maps / "spine-procedures.yaml")
    from mappings.codemaps import append_code

    append_code(
        cmap,
        "cpt",
        "22899",
        {
            "category": "lumbar_laminectomy",
            "module": "lumbar",
            "role": "index",
            "rank": 10,
            "revision": "false",
            "label": "reviewed",
        },
    )
    fixed = make_app(db_url, mappings={"codemaps": str(maps)})
    selected, counts = Pipeline(fixed).reprocess(cause_id=cause["cause_id"])
    assert selected == 3 and counts.mapped == 3
    assert ("codemap.unmapped_code", "cpt|22899") not in _causes(fixed)
    assert stats(fixed)["cases"] == 43
    assert _cases(fixed)["proc-unlisted-0"]["category"] == "lumbar_laminectomy"


def _causes_full(app: App) -> list[dict[str, Any]]:
    with app.engine.connect() as conn:
        return list_causes(conn)


def test_strict_validation_keeps_but_does_not_map(make_app: Callable[..., App], tmp_path: Path) -> None:
    bad = {
        "resourceType": "Procedure",
        "id": "p-bad",
        "status": "completed",
        "subject": {"reference": "Patient/x"},
        "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "22633"}]},
        "performedDateTime": "2025-03-14T08:30:00-05:00",
        "vendorExtra": True,
    }
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "p.ndjson").write_text(json.dumps(bad) + "\n")
    strict = make_app(f"sqlite:///{tmp_path / 'strict.db'}", mappings={"validation": "strict"})
    _sync(strict, folder)
    assert stats(strict)["procedures"] == 0 and stats(strict)["failed"] == 1
    assert {code for code, _ in _causes(strict)} == {"validation.invalid_element"}
    warn = make_app(f"sqlite:///{tmp_path / 'warn.db'}", mappings={"validation": "warn"})
    _sync(warn, folder)
    # +1 open warning each: the surgery has no stay, so no discharge date (case.no_discharge).
    assert stats(warn)["procedures"] == 1 and stats(warn)["errors_open"] == 2
    off = make_app(f"sqlite:///{tmp_path / 'off.db'}", mappings={"validation": "off"})
    _sync(off, folder)
    assert stats(off)["procedures"] == 1 and stats(off)["errors_open"] == 1


def test_an_ignored_cause_stays_ignored_for_new_records(app: App) -> None:
    _sync(app)
    cause = next(c for c in _causes_full(app) if c["value"] == "cpt|22899")
    with app.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO error_causes (cause_id, status, reason, updated_by, updated_at) "
                "VALUES (:c, 'ignored', 'registry agreed', 'tester', CURRENT_TIMESTAMP)"
            ),
            {"c": cause["cause_id"]},
        )
        conn.execute(
            text("UPDATE mapping_errors SET status = 'ignored' WHERE cause_id = :c"), {"c": cause["cause_id"]}
        )
    new = {
        "resourceType": "Procedure",
        "id": "proc-unlisted-new",
        "status": "completed",
        "subject": {"reference": "Patient/pat-0004"},
        "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "22899"}]},
        "performedDateTime": "2025-05-05T08:00:00-05:00",
    }
    Pipeline(app).ingest(_Events([Record(new, "test")]))
    with app.engine.connect() as conn:
        statuses = (
            conn.execute(
                text("SELECT status FROM mapping_errors WHERE cause_id = :c"), {"c": cause["cause_id"]}
            )
            .scalars()
            .all()
        )
    assert sorted(statuses) == ["ignored"] * 4
    assert ("codemap.unmapped_code", "cpt|22899") not in _causes(app)


def test_proms_from_another_feed_join_the_same_persons_case(app: App, tmp_path: Path) -> None:
    """Surgery from the EHR feed, questionnaires from a PROM platform with its own patient ids:
    the registry pseudonym (site + MRN) makes them one person."""
    _sync(app)
    patient = json.loads((SAMPLE_FEED / "Patient.ndjson").read_text().splitlines()[0])
    other = {**patient, "id": "prom-platform-77", "name": [{"family": "Other-System"}]}
    qr = next(
        json.loads(line)
        for line in (SAMPLE_FEED / "QuestionnaireResponse.ndjson").read_text().splitlines()
        if json.loads(line)["subject"]["reference"] == f"Patient/{patient['id']}"
    )
    moved = {**qr, "id": "platform-qr-1", "subject": {"reference": "Patient/prom-platform-77"}}
    folder = tmp_path / "platform"
    folder.mkdir()
    (folder / "qr.ndjson").write_text(json.dumps(moved) + "\n")
    Pipeline(app).ingest(FilesSource("prom-platform", [folder]), SourceContext())
    with app.engine.connect() as conn:
        row = conn.execute(select(PROMS).where(PROMS.c.id == "platform-qr-1")).one()
    assert row.case_id is None  # the platform's patient is unknown so far: nothing to link
    (folder / "patient.ndjson").write_text(json.dumps(other) + "\n")
    Pipeline(app).ingest(FilesSource("prom-platform", [folder]), SourceContext())
    with app.engine.connect() as conn:
        row = conn.execute(select(PROMS).where(PROMS.c.id == "platform-qr-1")).one()
        original = conn.execute(select(PROMS).where(PROMS.c.id == qr["id"])).one()
    assert (row.case_id, row.timepoint) == (original.case_id, original.timepoint)
    assert row.case_id == f"sample:{patient['id'].replace('pat', 'proc')}"


def _poison_trigger(app: App) -> None:
    """A real database fault for one row (a trigger), to prove one bad row fails alone."""
    with app.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER poison BEFORE INSERT ON patients WHEN NEW.id = 'poison' "
                "BEGIN SELECT RAISE(ABORT, 'row refused'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                "IF NEW.id = 'poison' THEN RAISE EXCEPTION 'row refused'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER poison BEFORE INSERT ON patients FOR EACH ROW EXECUTE FUNCTION refuse()"
            )


def test_a_row_the_database_refuses_fails_alone_and_the_feed_goes_on(app: App) -> None:
    _poison_trigger(app)
    poison = {
        "resourceType": "Patient",
        "id": "poison",
        "gender": "female",
        "identifier": [{"type": {"coding": [{"code": "MR"}]}, "value": "MRN-SECRET-1"}],
    }
    too_long = {"resourceType": "Procedure", "id": "x" * 300, "status": "completed"}
    good = {"resourceType": "Patient", "id": "fine-1", "gender": "male"}
    result = Pipeline(app).ingest(_Events([Record(poison, "t"), Record(too_long, "t"), Record(good, "t")]))
    assert result.outcome == "succeeded"
    with app.engine.connect() as conn:
        staged = dict(conn.execute(text("SELECT resource_id, status FROM staging")).all())
        errors = {
            r.code: r for r in conn.execute(text("SELECT code, message, resource_id FROM mapping_errors"))
        }
    assert staged["poison"] == "failed" and staged["fine-1"] == "mapped"
    assert "store.write_failed" in errors and "MRN-SECRET-1" not in errors["store.write_failed"].message
    assert errors["intake.invalid_identity"].message == "Procedure.id is longer than 256 characters"
    assert stats(app)["patients"] == 1
