"""Golden mapping outputs: every shipped view and every handled v2 message type, input →
registry rows and issues, compared with the reviewed files under tests/golden/.

A mapping edit that changes any output fails here until ``make golden`` rewrites the expected
files, so the reviewer sees the effect as a diff of those files.
"""

from __future__ import annotations

import difflib

import pytest

from adapters.hl7v2.config import load_config
from mappings.engine import BUNDLED as BUNDLED_VIEWS
from tests.golden.runner import GoldenCase, cases, compute, render

CASES = cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_output_matches_golden_file(case: GoldenCase) -> None:
    assert case.expected.exists(), f"{case.expected.name} missing: run `make golden` and review it"
    expected = case.expected.read_text()
    actual = render(compute(case))
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True), actual.splitlines(keepends=True),
                fromfile=f"{case.expected.name} (golden)", tofile="now", n=2,
            )
        )
        pytest.fail(
            f"{case.id} maps differently from its golden file; if the change is intended, run "
            f"`make golden` and commit the reviewed diff:\n{diff[:6000]}"
        )


def test_every_shipped_view_has_a_golden_case() -> None:
    views = {p.stem for p in BUNDLED_VIEWS.glob("*.yaml")}
    assert views and views == {c.name for c in CASES if c.kind == "view"}


def test_every_handled_v2_message_type_has_a_golden_case() -> None:
    handled = {t.replace("^", "-") for t in load_config().messages}
    assert handled and handled == {c.name for c in CASES if c.kind == "hl7v2"}


def test_every_golden_input_maps_something() -> None:
    # An input that maps to nothing (an empty file, a v2 message rejected outright) pins no
    # mapping at all; such a case needs a better input, not a golden file.
    for case in CASES:
        out = compute(case)
        assert out["records"], case.id
        assert any(r["disposition"] == "mapped" for r in out["records"]), case.id

