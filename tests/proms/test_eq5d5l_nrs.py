"""EQ-5D-5L US value set (Pickard 2019), EQ VAS, pain NRS and the NASS satisfaction item."""

from __future__ import annotations

import pytest

from mappings.proms import InstrumentRegistry, build_questionnaire_response, load_instruments
from tests.proms.conftest import coded, integer, response

EQ_URL = "https://registry-adapter.invalid/fhir/Questionnaire/eq5d5l"


def profile(state: str, vas: int | None = None) -> dict[str, int | None]:
    levels = dict(zip(["mo", "sc", "ua", "pd", "ad"], (int(c) for c in state), strict=True))
    return {**levels, "eq_vas": vas}


@pytest.mark.parametrize(
    ("state", "index"),
    [
        ("11111", 1.0),
        ("21111", 0.904),
        ("12111", 0.911),
        ("11211", 0.932),
        ("11121", 0.940),
        ("11112", 0.943),
        ("21354", 0.090),
        ("55555", -0.573),
    ],
)
def test_us_value_set(registry: InstrumentRegistry, state: str, index: float) -> None:
    """Pickard et al., Value Health 2019;22(8):931-41, US EQ-5D-5L value set; expected values
    from fragla/eq5d tests/testthat/test-eq5d5l.R ('EQ-5D-5L USA gives correct answer')."""
    result = registry["eq5d5l"].score(profile(state, vas=70))
    assert result.scores == {"index": index, "vas": 70.0}


def test_index_needs_all_five_dimensions_vas_does_not(registry: InstrumentRegistry) -> None:
    answers = profile("21111", vas=55)
    answers["ad"] = None
    result = registry["eq5d5l"].score(answers)
    assert result.scores == {"index": None, "vas": 55.0}
    assert [issue.code for issue in result.issues] == ["prom.too_many_missing"]


def test_level_outside_1_to_5_is_rejected(registry: InstrumentRegistry) -> None:
    answers = profile("21111")
    answers["mo"] = 6
    result = registry["eq5d5l"].score(answers)
    assert result.scores["index"] is None
    assert result.issues[0].code == "prom.value_out_of_range"
    assert result.issues[0].item == "mo"


def test_eq5d_from_a_response_by_url(registry: InstrumentRegistry) -> None:
    qr = response(
        [
            integer("eq5d-mo", 2),
            integer("eq5d-sc", 1),
            integer("eq5d-ua", 3),
            integer("eq5d-pd", 5),
            integer("eq5d-ad", 4),
            integer("eq5d-vas", 62),
        ],
        f"{EQ_URL}|1.0",
    )
    instrument = registry.recognise(qr)
    assert instrument is not None and instrument.id == "eq5d5l"
    answers, issues = instrument.extract_answers(qr)
    assert issues == []
    assert instrument.score(answers).scores == {"index": 0.090, "vas": 62.0}


def test_site_can_switch_value_set_decrements() -> None:
    """A non-US registry replaces the decrements by site override (here made-up numbers)."""
    registry = load_instruments(
        site_overrides={
            "eq5d5l": {"scoring": {"index": {"value_set": "test", "decrements": {"mo": {2: 0.5}}}}}
        }
    )
    assert registry["eq5d5l"].score(profile("21111")).scores["index"] == 0.5


@pytest.mark.parametrize("instrument_id", ["nrs_back", "nrs_leg", "nrs_neck", "nrs_arm"])
def test_nrs_round_trip(registry: InstrumentRegistry, instrument_id: str) -> None:
    instrument = registry[instrument_id]
    qr = build_questionnaire_response(
        instrument, {"pain": 7}, qr_id="q1", patient_ref="Patient/p1", authored="2026-03-01"
    )
    assert registry.recognise(qr) is instrument
    answers, issues = instrument.extract_answers(qr)
    assert issues == []
    assert instrument.score(answers).scores == {"nrs": 7.0}


def test_nrs_loinc_answer_code_and_range(registry: InstrumentRegistry) -> None:
    """LOINC 0-10 answer list (LA10139-6 = 7) read by code, never by display."""
    leg = registry["nrs_leg"]
    answers, issues = leg.extract_answers(response([coded("nrs-leg", "LA10139-6")]))
    assert (answers, issues) == ({"pain": 7}, [])
    answers, issues = leg.extract_answers(response([integer("nrs-leg", 11)]))
    assert answers == {"pain": None}
    assert [(i.code, i.item) for i in issues] == [("prom.value_out_of_range", "nrs-leg")]
    assert leg.score({"pain": 0}).scores == {"nrs": 0.0}
    assert leg.score({"pain": 10}).scores == {"nrs": 10.0}


def test_nrs_decimal_answer_is_out_of_range(registry: InstrumentRegistry) -> None:
    result = registry["nrs_back"].score({"pain": 6.5})
    assert result.scores == {"nrs": None}
    assert result.issues[0].code == "prom.value_out_of_range"


def test_satisfaction_item(registry: InstrumentRegistry) -> None:
    sat = registry["nass_satisfaction"]
    assert sat.score({"nass": 2}).scores == {"satisfaction": 2.0}
    assert sat.score({"nass": 5}).issues[0].code == "prom.value_out_of_range"
