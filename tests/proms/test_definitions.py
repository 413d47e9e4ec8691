"""Loading instrument YAML: shipped files, site overrides, and errors that name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mappings.proms import InstrumentDefinitionError, load_instruments

MINIMAL = """\
id: demo
name: Demo
version: "1"
items:
  - {id: a, link_ids: [a], min: 1, max: 5}
  - {id: b, link_ids: [b], min: 1, max: 5}
scoring:
  - {output: b_reversed, kind: recode, item: b, reverse: true}
  - {output: total, kind: sum, items: [a, b_reversed]}
"""


def write(tmp_path: Path, text: str, name: str = "demo.yaml") -> Path:
    (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_shipped_instruments() -> None:
    registry = load_instruments()
    assert sorted(i.id for i in registry) == [
        "eq5d5l",
        "nass_satisfaction",
        "ndi",
        "nrs_arm",
        "nrs_back",
        "nrs_leg",
        "nrs_neck",
        "odi",
        "promis10",
    ]
    assert registry["promis10"].score_names == ["gph_raw", "gph_t", "gmh_raw", "gmh_t"]
    assert registry["eq5d5l"].score_names == ["index", "vas"]
    for instrument in registry:
        assert instrument.questionnaire_urls, instrument.id
        assert instrument.definition.sources, instrument.id


def test_reverse_recode_from_yaml(tmp_path: Path) -> None:
    demo = load_instruments(write(tmp_path, MINIMAL))["demo"]
    assert demo.score({"a": 5, "b": 1}).scores == {"total": 10.0}
    assert demo.score({"a": 1, "b": 5}).scores == {"total": 2.0}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("min: 1, max: 5}\n  - {id: b", "min: 1, max: 5, colour: red}\n  - {id: b"),
            "demo.yaml: items.0.colour: Extra inputs are not permitted",
        ),
        (("kind: sum", "kind: average"), "demo.yaml: scoring.1: Input tag 'average'"),
        (("items: [a, b_reversed]", "items: [a, c]"), "unknown item or output 'c'"),
        (("item: b, reverse: true", "item: b"), "exactly one of 'map' or 'reverse: true'"),
        (('version: "1"\n', ""), "demo.yaml: version: Field required"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in MINIMAL
    with pytest.raises(InstrumentDefinitionError, match=r"^demo\.yaml") as error:
        load_instruments(write(tmp_path, MINIMAL.replace(old, new)))
    assert expected in str(error.value)


def test_yaml_syntax_error_names_file(tmp_path: Path) -> None:
    with pytest.raises(InstrumentDefinitionError, match=r"broken\.yaml: not valid YAML"):
        load_instruments(write(tmp_path, "id: [unclosed\n", "broken.yaml"))


def test_missing_or_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(InstrumentDefinitionError, match="no instrument files"):
        load_instruments(tmp_path)
    with pytest.raises(InstrumentDefinitionError, match="no such directory"):
        load_instruments(tmp_path / "absent")


def test_duplicate_instrument_id(tmp_path: Path) -> None:
    write(tmp_path, MINIMAL, "one.yaml")
    write(tmp_path, MINIMAL, "two.yaml")
    with pytest.raises(InstrumentDefinitionError, match="'demo' is defined twice"):
        load_instruments(tmp_path)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"nope": {}}, "site_overrides.nope: no such instrument"),
        ({"odi": {"items": {"odi11": {"link_ids": ["x"]}}}}, "site_overrides.odi: items.odi11"),
        (
            {"odi": {"scoring": {"odi": {"max_missing": -1}}}},
            "odi.yaml + site_overrides.odi: scoring.0.scaled_sum.max_missing",
        ),
        (
            {"odi": {"recognition": {"questionnaires": [{"uri": "x"}]}}},
            "recognition.questionnaires.2.uri",
        ),
    ],
)
def test_site_override_errors(overrides: dict[str, object], expected: str) -> None:
    with pytest.raises(InstrumentDefinitionError) as error:
        load_instruments(site_overrides=overrides)
    assert expected in str(error.value)


def test_site_overrides_extend_and_do_not_touch_shipped_files() -> None:
    url = "https://ehr.example/Questionnaire/odi"
    with_site = load_instruments(
        site_overrides={"odi": {"recognition": {"questionnaires": [{"url": url}]}}}
    )
    assert url in with_site["odi"].questionnaire_urls
    # The shipped URLs are kept, and a fresh load without overrides is unchanged.
    assert len(with_site["odi"].questionnaire_urls) == 3
    assert url not in load_instruments()["odi"].questionnaire_urls
