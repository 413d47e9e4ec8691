"""Every file in fixtures/hl7v2/malformed/ ends in a clear error naming what is wrong:
read through the file-drop source, then converted. No crash, nothing silently dropped."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from adapters.hl7v2.convert import ConversionIssue, convert_message
from adapters.hl7v2.files import FileMessage, FileMessageError, iter_messages
from tests.hl7v2.conftest import MALFORMED

TZ = ZoneInfo("America/New_York")

# file → (code, segment or field it names) that must be among the errors of that file
Issue = tuple[str, str | None]
EXPECTED: dict[str, set[Issue]] = {
    "bad_date.hl7": {("hl7.bad_date", "PID-7"), ("hl7.bad_date", "PR1-5"),
                     ("hl7.bad_date", "MSH-7")},
    "binary_garbage.hl7": {("hl7.no_msh", None)},
    "empty.hl7": {("hl7.empty", None)},
    "latin1_name.hl7": {("hl7.charset_guessed", "MSH-18"), ("hl7.missing_segment", "PV1")},
    "many_repetitions.hl7": {("hl7.too_many_repetitions", "PID-3"),
                             ("hl7.missing_segment", "PV1")},
    "missing_control_id.hl7": {("hl7.missing_control_id", "MSH-10")},
    "mllp_framed_two_messages.hl7": {("hl7.missing_segment", "PV1")},
    "no_msh.hl7": {("hl7.no_msh", None)},
    "truncated_mid_segment.hl7": {("hl7.missing_segment", "PV1")},
    "unknown_version.hl7": {("hl7.unsupported_version", "MSH-12")},
    "wrong_field_separator.hl7": {("hl7.bad_separator", "MSH-1")},
    "z_segments_only.hl7": {("hl7.unsupported_message", "MSH-9")},
}


def _where(issue: ConversionIssue) -> str | None:
    return issue.field if issue.field and issue.field != issue.segment else issue.segment


def _outcomes(path: Path) -> list[tuple[str, set[Issue], list[dict[str, Any]]]]:
    out: list[tuple[str, set[Issue], list[dict[str, Any]]]] = []
    for item in iter_messages(path):
        if isinstance(item, FileMessageError):
            out.append((item.origin, {(item.code, None)}, []))
            continue
        assert isinstance(item, FileMessage)
        r = convert_message(item.raw, source=item.origin, tz=TZ)
        out.append((item.origin, {(e.code, _where(e)) for e in r.errors}, r.resources))
        assert all(e.message for e in r.errors)
    return out


def test_all_malformed_files_covered() -> None:
    assert {p.name for p in MALFORMED.iterdir()} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_file_yields_clear_error(name: str) -> None:
    outcomes = _outcomes(MALFORMED / name)
    assert outcomes, "nothing yielded"
    for origin, issues, _ in outcomes:
        assert origin.startswith(name + "#")
        assert EXPECTED[name] <= {(c, w) for c, w in issues} | {
            (c, None) for c, _ in issues}, issues


def test_mllp_framed_file_gives_both_messages() -> None:
    outcomes = _outcomes(MALFORMED / "mllp_framed_two_messages.hl7")
    assert [o[0] for o in outcomes] == ["mllp_framed_two_messages.hl7#1",
                                        "mllp_framed_two_messages.hl7#2"]
    ids = {r["id"] for _, _, res in outcomes for r in res if r["resourceType"] == "Patient"}
    assert len(ids) == 2  # two different patients (MRN 1 and 2)


def test_latin1_name_is_decoded_not_mangled() -> None:
    raw = (MALFORMED / "latin1_name.hl7").read_bytes()
    r = convert_message(raw, source="x", tz=TZ)
    (patient,) = [x for x in r.resources if x["resourceType"] == "Patient"]
    assert patient["name"][0] == {"family": "MÜLLER", "given": ["JOSÉ"]}
    assert all("MÜLLER" not in e.message for e in r.errors)


def test_bad_dates_do_not_leak_values() -> None:
    r = convert_message((MALFORMED / "bad_date.hl7").read_bytes(), source="x", tz=TZ)
    for e in r.errors:
        assert "19991340" not in e.message and "2025023112" not in e.message


def test_many_repetitions_converts_up_to_the_limit() -> None:
    r = convert_message((MALFORMED / "many_repetitions.hl7").read_bytes(), source="x", tz=TZ)
    (patient,) = [x for x in r.resources if x["resourceType"] == "Patient"]
    assert len(patient["identifier"]) == 100
