"""Validation problems in words registry staff can read, and what they do to a record."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text

from adapters.base import SourceContext
from adapters.files import FilesSource
from adapters.validation import validate
from registry_adapter.app import App
from registry_adapter.pipeline import Pipeline, stats

CPT = "http://www.ama-assn.org/go/cpt"


def _procedure(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "id": "p-1",
        "status": "completed",
        "subject": {"reference": "Patient/x"},
        "code": {"coding": [{"system": CPT, "code": "22633"}]},
        "performedDateTime": "2025-03-14T08:30:00-05:00",
        **extra,
    }


def _errors(app: App, records: list[dict[str, Any]], folder: Path) -> list[Any]:
    folder.mkdir()
    (folder / "feed.ndjson").write_text("".join(json.dumps(r) + "\n" for r in records))
    Pipeline(app).ingest(FilesSource("feed", [folder]), SourceContext())
    with app.engine.connect() as conn:
        return list(conn.execute(text("SELECT code, field, severity, message FROM mapping_errors")))


def test_messages_are_plain_words_never_a_regular_expression() -> None:
    [issue] = validate(_procedure(code={"text": ""}))
    assert issue.message == "Procedure.code.text is an empty string; FHIR does not allow empty strings"
    [bad_id] = validate(_procedure(id="p 1"))
    assert bad_id.field == "Procedure.id"
    for found in (issue, bad_id):
        assert "pattern" not in found.message and "regex" not in found.message
        assert "[" not in found.message and "\\" not in found.message


def test_a_time_without_offset_is_a_warning_read_as_site_local() -> None:
    [issue] = validate(_procedure(performedDateTime="2025-03-14T08:30:00"))
    assert (issue.code, issue.severity) == ("validation.time_without_offset", "warning")
    assert "read as site-local" in issue.message and "2025" not in issue.message


def test_problems_of_a_record_that_still_mapped_are_warnings(sqlite_app: App, tmp_path: Path) -> None:
    errors = _errors(
        sqlite_app, [_procedure(code={"text": "", "coding": _procedure()["code"]["coding"]})], tmp_path / "in"
    )
    assert stats(sqlite_app)["procedures"] == 1
    # (Its case also says it has no discharge: the procedure comes without a stay.)
    assert [(e.code, e.field, e.severity) for e in errors if e.code.startswith("validation.")] == [
        ("validation.invalid_element", "Procedure.code.text", "warning")
    ]


def test_strict_mode_maps_a_record_whose_only_problem_is_a_time_without_offset(
    make_app: Callable[..., App], tmp_path: Path
) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'strict.db'}", mappings={"validation": "strict"})
    errors = _errors(app, [_procedure(performedDateTime="2025-03-14T08:30:00")], tmp_path / "in")
    assert stats(app)["procedures"] == 1
    assert [(e.code, e.severity) for e in errors if e.code.startswith("validation.")] == [
        ("validation.time_without_offset", "warning")
    ]


def test_primitive_of_the_wrong_json_type_is_a_named_validation_error(
    sqlite_app: App, tmp_path: Path
) -> None:
    qr = {
        "resourceType": "QuestionnaireResponse",
        "id": "qr-1",
        "questionnaire": "https://registry-adapter.invalid/fhir/Questionnaire/odi",
        "status": ["completed"],
        "subject": {"reference": "Patient/x"},
        "authored": "2025-03-14T08:30:00-05:00",
        "item": [{"linkId": f"odi-{n}", "answer": [{"valueInteger": 1}]} for n in range(1, 11)],
    }
    errors = _errors(sqlite_app, [qr], tmp_path / "in")
    codes = {(e.code, e.field, e.severity) for e in errors}
    assert ("validation.wrong_type", "QuestionnaireResponse.status", "error") in codes
    assert all(e.code != "mapping.internal_error" for e in errors), errors
    wrong = next(e for e in errors if e.code == "validation.wrong_type")
    assert wrong.message == "QuestionnaireResponse.status should be a JSON string, but an array was sent"
