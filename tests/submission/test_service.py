"""Submission runs: delta, idempotence, withdrawals, held-back cases, feedback, the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text, update

from registry_adapter.app import App
from registry_adapter.cli import cli
from registry_adapter.pipeline import Pipeline
from registry_adapter.submission.service import (
    SubmissionError,
    last_complete_quarter,
    quarter_bounds,
    run_submission,
)
from registry_store.submissions import ITEMS, SUBMISSIONS
from registry_store.tables import ENCOUNTERS as ENCS
from registry_store.tables import MAPPING_ERRORS as ERRORS
from tests.conftest import SAMPLE_FEED, write_config_file
from tests.submission.conftest import SAMPLE_OUTCOMES, ingest


def test_quarters() -> None:
    assert quarter_bounds("2025Q3") == (date(2025, 7, 1), date(2025, 9, 30))
    assert quarter_bounds("2025q4") == (date(2025, 10, 1), date(2025, 12, 31))
    assert last_complete_quarter(date(2026, 1, 15)) == "2025Q4"
    assert last_complete_quarter(date(2026, 5, 2)) == "2026Q1"
    with pytest.raises(SubmissionError, match="not a quarter"):
        quarter_bounds("2025-3")


def test_delta_idempotence_and_withdrawal_after_deletion(sample_app: App, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run_submission(sample_app, period="2024Q4", output=out)
    assert first.counts["new"] > 0 and first.submission_id is not None
    sent_first = first.counts["new"]
    # The same period again: nothing new, nothing sent, nothing recorded.
    again = run_submission(sample_app, period="2024Q4", output=out)
    assert again.package is None and again.counts["new"] == again.counts["changed"] == 0
    assert again.counts["unchanged"] == sent_first
    # The next quarter sends only the cases operated on since.
    later = run_submission(sample_app, period="2025Q4", output=out)
    assert later.counts["new"] == 41 - sent_first and later.counts["changed"] == 0
    # The anchor procedure of a sent case is deleted at the source: a withdrawal goes.
    with sample_app.engine.begin() as conn:
        Pipeline(sample_app)._delete(conn, "sample", "Procedure", "proc-0001")
    gone = run_submission(sample_app, period="2025Q4", output=out)
    assert gone.counts["withdrawn"] == 1 and gone.counts["new"] == gone.counts["changed"] == 0
    with sample_app.engine.connect() as conn:
        last = conn.execute(
            select(ITEMS.c.case_id, ITEMS.c.action).where(ITEMS.c.submission_id == gone.submission_id)
        ).all()
        assert [tuple(r) for r in last] == [("sample:proc-0001", "withdrawn")]
        assert conn.execute(select(SUBMISSIONS.c.period)).scalars().all() == ["2024Q4", "2025Q4", "2025Q4"]
    assert len(list(out.glob("*.zip"))) == 3
    withdrawals = run_submission(sample_app, period="2025Q4", output=out)
    assert withdrawals.package is None  # withdrawn once, not again


def test_changed_case_is_sent_again(make_app: Callable[..., App], tmp_path: Path) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'r.db'}")
    ingest(app, SAMPLE_FEED)
    first = run_submission(app, period="2025Q4", output=tmp_path / "out")
    assert first.counts["new"] == 40
    ingest(app, SAMPLE_OUTCOMES)  # late data: outcomes of pat-0004 and pat-0007, a new revision
    second = run_submission(app, period="2025Q4", output=tmp_path / "out")
    assert second.counts == {"new": 1, "changed": 2, "unchanged": 38, "withdrawn": 0, "held_back": 0}


def test_case_missing_a_required_field_is_held_back_as_a_review_error(
    sqlite_app: App, tmp_path: Path
) -> None:
    with sqlite_app.engine.begin() as conn:
        conn.execute(update(ENCS).where(ENCS.c.id == "enc-0002").values(discharge_date=None))
        conn.execute(text("UPDATE cases SET discharge_date = NULL WHERE id = 'sample:proc-0002'"))
    dry = run_submission(sqlite_app, period="2025Q4", dry_run=True)
    assert dry.counts["held_back"] == 1 and dry.held_back_by_reason == {"missing discharge_date": 1}
    assert dry.package is None
    with sqlite_app.engine.connect() as conn:
        errors = conn.execute(
            select(
                ERRORS.c.code, ERRORS.c.field, ERRORS.c.resource_id, ERRORS.c.status, ERRORS.c.message
            ).where(ERRORS.c.mapping == "submission")
        ).all()
        assert [tuple(e)[:4] for e in errors] == [
            ("submission.not_ready", "discharge_date", "proc-0002", "open")
        ]
        assert "DEMO-" not in errors[0].message
        assert conn.execute(select(SUBMISSIONS.c.id)).first() is None  # a dry run records nothing
    sent = run_submission(sqlite_app, period="2025Q4", output=tmp_path / "out")
    assert sent.counts["held_back"] == 1 and sent.counts["new"] == 40
    # Fixed at the source: the case goes next time and its error is resolved.
    with sqlite_app.engine.begin() as conn:
        conn.execute(text("UPDATE cases SET discharge_date = '2024-03-27' WHERE id = 'sample:proc-0002'"))
    fixed = run_submission(sqlite_app, period="2025Q4", output=tmp_path / "out")
    assert fixed.counts["new"] == 1 and fixed.counts["held_back"] == 0
    with sqlite_app.engine.connect() as conn:
        assert conn.execute(select(ERRORS.c.status).where(ERRORS.c.mapping == "submission")).scalar_one() == (
            "resolved"
        )


def test_cli_submit_list_feedback_measures(tmp_path: Path) -> None:
    config = write_config_file(tmp_path, submission={"folder": str(tmp_path / "drop")})
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    run("import", str(SAMPLE_FEED), "--source", "sample")
    run("import", str(SAMPLE_OUTCOMES), "--source", "sample")
    dry = json.loads(run("submit", "--period", "2025Q4", "--dry-run", "--json"))
    assert dry["counts"]["new"] == 41 and dry["package"] is None
    sent = json.loads(run("submit", "--period", "2025Q4", "--json"))
    assert sent["package"] and (tmp_path / "drop" / sent["package"]).exists()
    assert "nothing new to submit" in run("submit", "--period", "2025Q4")
    listed = json.loads(run("submissions", "list", "--json"))
    assert [(s["period"], s["counts"]["new"]) for s in listed] == [("2025Q4", 41)]
    # Registry feedback: rows naming a sent case key become review errors on that case.
    from zipfile import ZipFile

    with ZipFile(tmp_path / "drop" / sent["package"]) as zf:
        first_key = zf.read("cases.csv").decode().splitlines()[1].split(",")[0]
    feedback = tmp_path / "feedback.csv"
    feedback.write_text(
        f"case_id,field,message\n{first_key},bmi,BMI required for fusion cases\nnope,sex,unknown case\n"
    )
    got = json.loads(run("submissions", "feedback", str(feedback), "--json"))
    assert got == {"rows": 2, "errors_opened": 1, "unknown_cases": [3]}
    errors = json.loads(run("errors", "list", "--json"))
    rejected = [e for e in errors if e["code"] == "registry.rejected"]
    assert len(rejected) == 1 and rejected[0]["field"] == "bmi"
    # The BMI arrives; the case goes again (changed) and the registry's finding is resolved.
    late = tmp_path / "late"
    late.mkdir()
    bmi = {
        "resourceType": "Observation",
        "id": "obs-0001-bmi",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "39156-5"}]},
        "subject": {"reference": "Patient/pat-0001"},
        "effectiveDateTime": "2024-03-10T09:00:00-05:00",
        "valueQuantity": {"value": 27.1},
    }
    (late / "Observation.ndjson").write_text(json.dumps(bmi) + "\n")
    run("import", str(late), "--source", "sample")
    resent = json.loads(run("submit", "--period", "2025Q4", "--json"))
    assert resent["counts"]["changed"] == 1
    assert not [e for e in json.loads(run("errors", "list", "--json")) if e["code"] == "registry.rejected"]
    measures = json.loads(run("measures", "--json"))
    lumbar = measures["modules"]["lumbar"]
    assert lumbar["cases"] == 28 and lumbar["surgical_site_infection_rate"] == round(100 / 28, 1)
    assert lumbar["readmission_90d_rate"] == round(100 / 28, 1) and lumbar["readmission_30d_rate"] == 0.0
    assert "module" in run("measures", "--period", "2024Q1")
    bad = runner.invoke(cli, ["--config", str(config), "submit", "--period", "2025-13"])
    assert bad.exit_code != 0 and "not a quarter" in bad.output


def test_feedback_file_without_the_expected_columns_is_refused(sqlite_app: App, tmp_path: Path) -> None:
    from registry_adapter.submission.feedback import FeedbackFileError, load_feedback

    bad = tmp_path / "feedback.csv"
    bad.write_text("record;problem\nx;y\n")
    expected = r"feedback\.csv:1: expected the columns case_id, field, message"
    with pytest.raises(FeedbackFileError, match=expected):
        load_feedback(sqlite_app, bad)
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(FeedbackFileError, match="cannot read the feedback file"):
        load_feedback(sqlite_app, bad)


def test_import_recomputes_case_outcomes_at_once(tmp_path: Path) -> None:
    """The after-store plug-in: late data shows in case_outcomes right after the import."""
    from registry_store.tables import CASE_OUTCOMES

    config = write_config_file(tmp_path)
    runner = CliRunner()
    for folder in (SAMPLE_FEED, SAMPLE_OUTCOMES):
        result = runner.invoke(cli, ["--config", str(config), "import", str(folder), "--source", "sample"])
        assert result.exit_code == 0, result.output
    from registry_adapter.app import build_app
    from registry_adapter.config import load_settings

    app = build_app(load_settings(config))
    with app.engine.connect() as conn:
        stored = dict(conn.execute(select(CASE_OUTCOMES.c.case_id, CASE_OUTCOMES.c.outcomes)).all())
    app.engine.dispose()
    assert len(stored) == 41 and stored["sample:proc-0004"]["readmission_days"] == 45
