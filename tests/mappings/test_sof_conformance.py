"""The SQL-on-FHIR v2 conformance suite, one pytest case per test in the suite's files.

Shareable tests must pass. Experimental ones the engine does not support would be listed in
UNSUPPORTED_EXPERIMENTAL and run as strict xfail; today the engine passes all of them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mappings.conformance import (
    Case,
    compare_rows,
    is_shareable,
    load_cases,
    run_case,
    run_suite,
    summarize,
)
from tests.conftest import FIXTURES

# The suite is third-party data vendored with its licence (tests/fixtures/sql-on-fhir-v2);
# SQL_ON_FHIR_TESTS points at another checkout of it (a newer upstream commit, say).
SUITE = Path(os.environ.get("SQL_ON_FHIR_TESTS", FIXTURES / "sql-on-fhir-v2" / "tests"))
UNSUPPORTED_EXPERIMENTAL: dict[str, str] = {}  # case id -> reason

pytestmark = pytest.mark.skipif(
    not SUITE.is_dir(),
    reason=f"SQL-on-FHIR suite not found at {SUITE}: unset SQL_ON_FHIR_TESTS to use the copy in "
    "tests/fixtures/sql-on-fhir-v2, or point it at the tests/ folder of a clone of "
    "github.com/FHIR/sql-on-fhir-v2",
)
CASES = list(load_cases(SUITE)) if SUITE.is_dir() else []


def _param(case: Case) -> object:
    marks = []
    if case.id in UNSUPPORTED_EXPERIMENTAL:
        assert not case.shareable, f"{case.id} is shareable: it must pass"
        marks.append(pytest.mark.xfail(reason=UNSUPPORTED_EXPERIMENTAL[case.id], strict=True))
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_conformance_case(case: Case) -> None:
    outcome = run_case(case)
    assert outcome.passed, outcome.message


def test_suite_has_the_expected_size() -> None:
    assert len(CASES) == 134
    assert sum(c.shareable for c in CASES) == 123


def test_run_suite_report_shape(tmp_path: Path) -> None:
    report, passed, total = run_suite(SUITE)
    assert (passed, total) == (134, 134)
    assert summarize(report) == {"shareable": (123, 123), "experimental": (11, 11)}
    first = report["basic.json"]["tests"][0]
    assert first == {"name": "basic attribute", "tags": ["shareable"],
                     "result": {"passed": True}}
    json.dumps(report)  # the report is written as JSON by the CLI


def test_failures_are_reported_with_a_reason(tmp_path: Path) -> None:
    suite = {
        "title": "t", "resources": [{"resourceType": "Patient", "id": "p"}],
        "tests": [
            {"title": "wrong rows", "tags": ["shareable"],
             "view": {"resource": "Patient", "select": [{"column": [{"name": "id",
                                                                      "path": "id"}]}]},
             "expect": [{"id": "q"}]},
            {"title": "no error", "tags": ["experimental"],
             "view": {"resource": "Patient", "select": [{"column": [{"name": "id",
                                                                      "path": "id"}]}]},
             "expectError": True},
            {"title": "columns", "tags": ["shareable"],
             "view": {"resource": "Patient", "select": [{"column": [{"name": "id",
                                                                      "path": "id"}]}]},
             "expectColumns": ["pid"], "expect": [{"id": "p"}]},
        ],
    }
    (tmp_path / "t.json").write_text(json.dumps(suite))
    report, passed, total = run_suite(tmp_path)
    assert (passed, total) == (0, 3)
    reasons = [t["result"]["reason"] for t in report["t.json"]["tests"]]
    assert reasons[0].startswith("unexpected row")
    assert reasons[1] == "expected an error, got rows"
    assert reasons[2].startswith("columns ['id']")
    assert summarize(report) == {"shareable": (0, 2), "experimental": (0, 1)}


def test_row_comparison_ignores_order_but_not_multiplicity() -> None:
    assert compare_rows([{"a": 1}, {"a": 2}], [{"a": 2}, {"a": 1}]) is None
    assert compare_rows([{"a": 1}, {"a": 1}], [{"a": 1}, {"a": 2}]) is not None
    assert compare_rows([{"a": 1.0}], [{"a": 1}]) is None
    assert compare_rows([{"a": [1, 2]}], [{"a": [2, 1]}]) is not None


def test_shareable_tag() -> None:
    assert is_shareable({"tags": ["shareable"]})
    assert not is_shareable({"tags": ["experimental"]})
    assert not is_shareable({})
