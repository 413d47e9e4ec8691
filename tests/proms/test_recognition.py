"""Recognition of a QuestionnaireResponse: canonical URL, panel LOINC, item LOINC, linkIds."""

from __future__ import annotations

from mappings.proms import Instrument, InstrumentRegistry, load_instruments
from tests.proms.conftest import coded, integer, response

ODI_ITEMS = [integer(f"odi-{n}", 1) for n in range(1, 11)]


def ids(found: list[Instrument]) -> list[str]:
    return [instrument.id for instrument in found]


def test_by_canonical_url_with_and_without_version(registry: InstrumentRegistry) -> None:
    url = "http://example.org/fhir/Questionnaire/NeckDisabilityIndexQuestionnaire"
    for questionnaire in (url, f"{url}|0.1.0"):
        found = registry.recognise(response([], questionnaire))
        assert found is not None and found.id == "ndi"


def test_versioned_site_url_matches_only_that_version() -> None:
    registry = load_instruments(
        site_overrides={
            "odi": {
                "recognition": {
                    "questionnaires": [{"url": "https://ehr.example/Questionnaire/back|2.0"}]
                }
            }
        }
    )
    assert (
        registry.recognise(response([], "https://ehr.example/Questionnaire/back|2.0")) is not None
    )
    assert registry.recognise(response([], "https://ehr.example/Questionnaire/back|3.0")) is None
    assert registry.recognise(response([], "https://ehr.example/Questionnaire/back")) is None


def test_by_panel_loinc_in_the_canonical(registry: InstrumentRegistry) -> None:
    found = registry.recognise(response([], "http://loinc.org/q/85524-7"))
    assert found is not None and found.id == "promis10"


def test_by_panel_loinc_on_a_contained_questionnaire(registry: InstrumentRegistry) -> None:
    contained = [
        {
            "resourceType": "Questionnaire",
            "id": "q",
            "status": "active",
            "code": [{"system": "http://loinc.org", "code": "82226-2"}],
        }
    ]
    found = registry.recognise(response([], "#q", contained=contained))
    assert found is not None and found.id == "ndi"


def test_by_item_loinc_in_link_ids(registry: InstrumentRegistry) -> None:
    """LHC-Forms style linkIds ("/61577-3") carry the LOINC item code."""
    items = [
        coded(f"/{code}", "LA8967-7")
        for code in ("61577-3", "61578-1", "61579-9", "61580-7", "61581-5")
    ]
    qr = response(items, "urn:uuid:5b0e0c2e-unknown-form")
    found = registry.recognise(qr)
    assert found is not None and found.id == "promis10"
    answers, issues = found.extract_answers(qr)
    assert issues == []
    assert [answers[f"global0{n}"] for n in range(1, 6)] == [3, 3, 3, 3, 3]


def test_by_item_loinc_in_definition_and_contained_item_codes(
    registry: InstrumentRegistry,
) -> None:
    by_definition = [
        {**integer(f"q{n}", 1), "definition": f"http://loinc.org/q/82226-2#{code}"}
        for n, code in enumerate(["82227-0", "82228-8", "82229-6", "82230-4", "82231-2"])
    ]
    found = registry.recognise(response(by_definition))
    assert found is not None and found.id == "ndi"
    contained = [
        {
            "resourceType": "Questionnaire",
            "id": "q",
            "status": "active",
            "item": [
                {
                    "linkId": f"x{n}",
                    "type": "choice",
                    "code": [{"system": "http://loinc.org", "code": code}],
                }
                for n, code in enumerate(["82232-0", "82233-8", "82234-6", "82235-3", "82236-1"])
            ],
        }
    ]
    qr = response([integer(f"x{n}", 2) for n in range(5)], "#q", contained=contained)
    found = registry.recognise(qr)
    assert found is not None and found.id == "ndi"
    answers, _ = found.extract_answers(qr)
    assert [answers[f"ndi{n}"] for n in range(6, 11)] == [2, 2, 2, 2, 2]


def test_by_link_ids(registry: InstrumentRegistry) -> None:
    found = registry.recognise(response(ODI_ITEMS, "https://unknown.example/Q/back-form"))
    assert found is not None and found.id == "odi"


def test_too_few_link_ids_are_not_enough(registry: InstrumentRegistry) -> None:
    assert registry.recognise(response(ODI_ITEMS[:4])) is None
    # A lone generic linkId ("pain") must not turn a form into a PROMIS-10.
    assert registry.recognise(response([integer("pain", 4)])) is None


def test_unrelated_response_is_not_recognised(registry: InstrumentRegistry) -> None:
    qr = response([integer("phq9-1", 2)], "http://loinc.org/q/44249-1")
    assert registry.recognise(qr) is None
    assert registry.recognise_all(qr) == []


def test_site_form_combining_several_instruments() -> None:
    url = "https://ehr.example/Questionnaire/spine-intake"
    registry = load_instruments(
        site_overrides={
            name: {"recognition": {"questionnaires": [{"url": url}]}}
            for name in ("odi", "nrs_back", "nrs_leg")
        }
    )
    qr = response([*ODI_ITEMS, integer("nrs-back", 6), integer("nrs-leg", 8)], url)
    found = registry.recognise_all(qr)
    assert sorted(ids(found)) == ["nrs_back", "nrs_leg", "odi"]
    scores = {i.id: i.score(i.extract_answers(qr)[0]).scores for i in found}
    assert scores == {"odi": {"odi": 20.0}, "nrs_back": {"nrs": 6.0}, "nrs_leg": {"nrs": 8.0}}


def test_site_link_id_alias_recognises_and_extracts() -> None:
    registry = load_instruments(
        site_overrides={
            "nrs_back": {"items": {"pain": {"link_ids": ["EPIC#12345"]}}},
        }
    )
    qr = response([integer("EPIC#12345", 3)])
    found = registry.recognise(qr)
    assert found is not None and found.id == "nrs_back"
    assert found.extract_answers(qr) == ({"pain": 3}, [])
