"""Run the SQL-on-FHIR v2 conformance tests (the JSON files of the specification's tests/).

Each file holds ``resources`` and ``tests``; a test has a ``view`` and one of ``expect``
(rows), ``expectError`` (compiling or running the view must fail) or ``expectCount``, and
optionally ``expectColumns`` (column names in order). Rows are compared as the
specification's reference runner does: as a multiset, order ignored. The report has the
specification's test report shape: ``{file: {"tests": [{"name", "result": {"passed"}}]}}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mappings.viewdef import ViewError, compile_view

SHAREABLE = "shareable"
EXPERIMENTAL = "experimental"


@dataclass(frozen=True, slots=True)
class Case:
    """One test of one file, with what is needed to run it."""

    file: str
    name: str
    tags: tuple[str, ...]
    test: Mapping[str, Any]
    resources: tuple[Mapping[str, Any], ...] = field(repr=False)

    @property
    def id(self) -> str:
        return f"{self.file}::{self.name}"

    @property
    def shareable(self) -> bool:
        return is_shareable(self.test)


@dataclass(frozen=True, slots=True)
class Outcome:
    passed: bool
    message: str = ""
    actual: list[dict[str, Any]] | None = None


def is_shareable(test: Mapping[str, Any]) -> bool:
    """True for tests tagged ``shareable`` (required for conformance); false for
    ``experimental`` (features still being specified) and untagged ones."""
    return SHAREABLE in (test.get("tags") or ())


def load_cases(tests_dir: Path) -> Iterator[Case]:
    for path in sorted(Path(tests_dir).glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "tests" not in data:
            continue  # e.g. a JSON schema next to the tests
        resources = tuple(data.get("resources", ()))
        file_tags = tuple(data.get("tags") or ())
        for test in data["tests"]:
            tags = tuple(test.get("tags") or ()) or file_tags
            yield Case(path.name, test.get("title", "?"), tags, test, resources)


def run_case(case: Case) -> Outcome:
    test = case.test
    try:
        view = compile_view(test["view"], origin=case.id)
        actual = [row for resource in case.resources for row in view.rows(resource)]
    except ViewError as exc:
        if test.get("expectError"):
            return Outcome(True, str(exc))
        return Outcome(False, f"unexpected error: {exc}")
    if test.get("expectError"):
        return Outcome(False, "expected an error, got rows", actual)
    if "expectColumns" in test:
        names = [c.name for c in view.columns]
        if names != list(test["expectColumns"]):
            return Outcome(False, f"columns {names} != expected {test['expectColumns']}", actual)
    if "expectCount" in test:
        if len(actual) != test["expectCount"]:
            return Outcome(False, f"{len(actual)} rows, expected {test['expectCount']}", actual)
        if "expect" not in test:
            return Outcome(True, actual=actual)
    if "expect" not in test:
        return Outcome(False, "the test has no expectation")
    message = compare_rows(actual, test["expect"])
    return Outcome(message is None, message or "", actual)


def compare_rows(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> str | None:
    """None when both hold the same rows in any order, else what differs."""
    if len(actual) != len(expected):
        return f"{len(actual)} rows, expected {len(expected)}"
    remaining = [_canonical(row) for row in expected]
    for row in actual:
        key = _canonical(row)
        if key in remaining:
            remaining.remove(key)
        else:
            return f"unexpected row {row!r}"
    return None


def _canonical(row: Mapping[str, Any]) -> str:
    # JSON with sorted keys; 1 and 1.0 are the same number in the expectations.
    def normal(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, list):
            return [normal(v) for v in value]
        if isinstance(value, dict):
            return {k: normal(v) for k, v in value.items()}
        return value

    return json.dumps(normal(dict(row)), sort_keys=True)


def run_suite(tests_dir: Path) -> tuple[dict[str, Any], int, int]:
    """Run every test file in ``tests_dir``.

    Returns (report, passed, total) where report maps each file name to
    ``{"tests": [{"name": ..., "tags": [...], "result": {"passed": bool}}]}``.
    """
    report: dict[str, Any] = {}
    passed = total = 0
    for case in load_cases(tests_dir):
        outcome = run_case(case)
        entry: dict[str, Any] = {"name": case.name, "tags": list(case.tags),
                                 "result": {"passed": outcome.passed}}
        if not outcome.passed:
            entry["result"]["reason"] = outcome.message
        report.setdefault(case.file, {"tests": []})["tests"].append(entry)
        total += 1
        passed += outcome.passed
    return report, passed, total


def summarize(report: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """``{"shareable": (passed, total), "experimental": (passed, total)}`` from a report."""
    counts = {SHAREABLE: [0, 0], EXPERIMENTAL: [0, 0]}
    for file_report in report.values():
        for test in file_report["tests"]:
            kind = SHAREABLE if SHAREABLE in test.get("tags", ()) else EXPERIMENTAL
            counts[kind][1] += 1
            counts[kind][0] += bool(test["result"]["passed"])
    return {k: (v[0], v[1]) for k, v in counts.items()}
