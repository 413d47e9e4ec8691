"""build_questionnaire_response: valid R4 JSON that the same module reads back unchanged."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import pytest
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse

from mappings.proms import InstrumentRegistry, build_questionnaire_response

EXAMPLES: dict[str, Mapping[str, int | None]] = {
    "odi": {f"odi{n}": n % 6 for n in range(1, 11)} | {"odi8": None},
    "ndi": {f"ndi{n}": 2 for n in range(1, 11)},
    "promis10": {f"global{n:02d}": 3 for n in range(1, 11)} | {"global07": 8},
    "eq5d5l": {"mo": 2, "sc": 1, "ua": 3, "pd": 5, "ad": 4, "eq_vas": 62},
    "nrs_neck": {"pain": 4},
    "nass_satisfaction": {"nass": 1},
}


@pytest.mark.parametrize("instrument_id", sorted(EXAMPLES))
def test_round_trip(registry: InstrumentRegistry, instrument_id: str) -> None:
    instrument = registry[instrument_id]
    answers = EXAMPLES[instrument_id]
    qr = build_questionnaire_response(
        instrument,
        answers,
        qr_id=f"syn-{instrument_id.replace('_', '-')}",
        patient_ref="Patient/syn-1",
        authored=datetime(2026, 3, 1, 9, 30, tzinfo=UTC),
    )
    QuestionnaireResponse.model_validate(qr)  # raises if not valid R4(B)
    assert qr["authored"] == "2026-03-01T09:30:00+00:00"
    assert registry.recognise(qr) is instrument
    extracted, issues = instrument.extract_answers(qr)
    assert issues == []
    expected = {item_id: answers.get(item_id) for item_id in instrument.item_ids}
    assert extracted == expected
    assert instrument.score(extracted).answered == sum(v is not None for v in answers.values())


def test_coded_items_carry_loinc_code_and_ordinal(registry: InstrumentRegistry) -> None:
    qr = build_questionnaire_response(
        registry["promis10"],
        {"global08": 4},
        qr_id="q",
        patient_ref="Patient/p",
        authored="2026-03-01",
    )
    (item,) = qr["item"]
    assert item["linkId"] == "Global08r"
    coding = item["answer"][0]["valueCoding"]
    assert (coding["system"], coding["code"], coding["display"]) == (
        "http://loinc.org",
        "LA6752-5",
        "Mild",
    )
    assert coding["extension"][0]["valueDecimal"] == 4


def test_nested_group_and_reversed_form(registry: InstrumentRegistry) -> None:
    """A v1.1-style form (reversed ordinals) written by the builder reads back the same."""
    from mappings.proms import load_instruments

    url = "https://ehr.example/Questionnaire/promis-v11"
    site = load_instruments(
        site_overrides={
            "promis10": {
                "recognition": {
                    "questionnaires": [{"url": url, "reversed_ordinals": ["global08", "global10"]}]
                }
            }
        }
    )
    instrument = site["promis10"]
    qr = build_questionnaire_response(
        instrument,
        {"global10": 5},
        qr_id="q",
        patient_ref="Patient/p",
        authored="2026-03-01",
        questionnaire_url=url,
        group_link_id="promis",
    )
    QuestionnaireResponse.model_validate(qr)
    answer = qr["item"][0]["item"][0]["answer"][0]["valueCoding"]
    assert answer["code"] == "LA6270-8"  # Never
    assert answer["extension"][0]["valueDecimal"] == 1  # the v1.1 form's own ordinal
    assert instrument.extract_answers(qr)[0]["global10"] == 5


def test_invalid_fhir_id_is_refused(registry: InstrumentRegistry) -> None:
    with pytest.raises(ValueError, match="not a valid FHIR id"):
        build_questionnaire_response(
            registry["odi"],
            {},
            qr_id="has_underscore",
            patient_ref="Patient/p",
            authored="2026-03-01",
        )


def test_unknown_item_id_is_refused(registry: InstrumentRegistry) -> None:
    with pytest.raises(KeyError, match="odi has no item 'odi11'"):
        build_questionnaire_response(
            registry["odi"],
            {"odi11": 1},
            qr_id="q",
            patient_ref="Patient/p",
            authored="2026-03-01",
        )
