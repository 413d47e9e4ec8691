"""PROMIS Global Health v1.2: Global07 recode, raw sums, raw -> T tables, missing items."""

from __future__ import annotations

import pytest

from mappings.proms import InstrumentRegistry
from tests.proms.conftest import ITEM_WEIGHT, coded, integer, response

PACIO_P10_URL = "https://globalalliantinc.com/fhir/Questionnaire/questionnaire-PROMIS10"

# PACIO sample data depot, QuestionnaireResponse/4805 (PROMIS-10 worked example):
# linkId, LOINC answer code, the Questionnaire's ordinalValue.
PACIO_4805 = [
    ("health", "LA8968-5", 2),
    ("quality_of_life", "LA8967-7", 3),
    ("physical_health", "LA8967-7", 3),
    ("mental_health", "LA13913-1", 4),
    ("satisfaction_social", "LA13913-1", 4),
    ("social_activities", "LA8967-7", 3),
    ("physical_activities", "LA13938-8", 4),
    ("emotional", "LA10082-8", 3),
    ("fatigue", "LA6752-5", 4),
    ("pain", "LA6114-8", 3),
]


def p10(**values: int | None) -> dict[str, int | None]:
    answers: dict[str, int | None] = {f"global{n:02d}": None for n in range(1, 11)}
    answers.update(values)
    return answers


def test_pacio_4805_worked_example(registry: InstrumentRegistry) -> None:
    """PACIO PROMIS-10 worked example (QR 4805 -> 17 Observations): GPH raw 15 -> T 47.7,
    GMH raw 14 -> T 48.3. GPH = 3 + 4 + recode(pain 3) = 4 + fatigue Mild = 4 (v1.2
    direction: a second reversal would give 13 -> 42.3 and disagree with the example)."""
    items = [coded(link, code, ordinal) for link, code, ordinal in PACIO_4805]
    items += [
        {"linkId": "mbi", "answer": [{"valueString": "1PA3D58WH16"}]},
        {"linkId": "assessment_date", "answer": [{"valueDate": "2026-01-13"}]},
        {"linkId": "physical_health_tscore", "answer": [{"valueDecimal": 47.7}]},
    ]
    qr = response(items, PACIO_P10_URL)
    instrument = registry.recognise(qr)
    assert instrument is not None and instrument.id == "promis10"
    answers, issues = instrument.extract_answers(qr)
    assert issues == []  # metadata and sender scores are declared and skipped
    result = instrument.score(answers)
    assert result.scores == {"gph_raw": 15.0, "gph_t": 47.7, "gmh_raw": 14.0, "gmh_t": 48.3}
    assert result.answered == 10


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        # awell-score promis_10.test.ts: best, median and worst responses.
        (
            p10(
                global02=5,
                global03=5,
                global04=5,
                global05=5,
                global06=5,
                global07=0,
                global08=5,
                global10=5,
            ),
            {"gph_raw": 20.0, "gph_t": 67.7, "gmh_raw": 20.0, "gmh_t": 67.6},
        ),
        (
            p10(
                global02=3,
                global03=3,
                global04=3,
                global05=3,
                global06=3,
                global07=5,
                global08=3,
                global10=3,
            ),
            {"gph_raw": 12.0, "gph_t": 39.8, "gmh_raw": 12.0, "gmh_t": 43.5},
        ),
        (
            p10(
                global02=1,
                global03=1,
                global04=1,
                global05=1,
                global06=1,
                global07=10,
                global08=1,
                global10=1,
            ),
            {"gph_raw": 4.0, "gph_t": 16.2, "gmh_raw": 4.0, "gmh_t": 21.2},
        ),
    ],
)
def test_awell_reference_responses(
    registry: InstrumentRegistry, answers: dict[str, int | None], expected: dict[str, float]
) -> None:
    """awell-health/awell-score promis_10.test.ts and t_score_tables.ts (best 67.7/67.6,
    median raw 12 -> 39.8/43.5, worst 16.2/21.2)."""
    assert registry["promis10"].score(answers).scores == expected


@pytest.mark.parametrize(
    ("pain", "recoded"),
    [(0, 5), (1, 4), (3, 4), (4, 3), (6, 3), (7, 2), (9, 2), (10, 1)],
)
def test_global07_recode(registry: InstrumentRegistry, pain: int, recoded: int) -> None:
    """Global07 0 -> 5, 1-3 -> 4, 4-6 -> 3, 7-9 -> 2, 10 -> 1 (awell-score README 'Recalculate
    Question 7r'); other GPH items fixed at 1 so gph_raw = 3 + recoded."""
    answers = p10(global03=1, global06=1, global07=pain, global08=1)
    assert registry["promis10"].score(answers).scores["gph_raw"] == 3 + recoded


def test_missing_item_blanks_only_its_subscale(registry: InstrumentRegistry) -> None:
    answers = p10(
        global02=4,
        global04=4,
        global05=4,
        global10=4,
        global03=3,
        global06=3,
        global07=None,
        global08=3,
    )
    result = registry["promis10"].score(answers)
    assert result.scores == {"gph_raw": None, "gph_t": None, "gmh_raw": 16.0, "gmh_t": 53.3}
    assert [issue.code for issue in result.issues] == ["prom.too_many_missing"]
    assert result.issues[0].message.startswith("gph_raw")


def test_v11_linkids_are_reversed_v12_linkids_are_not(registry: InstrumentRegistry) -> None:
    """v1.0/1.1 print Global08/Global10 with 1 = None/Never; v1.2 renamed them Global08r /
    Global10r with 5 = None/Never (codetechnology.com 'PROMIS Global Health Versions')."""
    instrument = registry["promis10"]
    v11 = response([integer("Global08", 2), integer("Global10", 1)])
    v12 = response([integer("Global08r", 2), integer("Global10r", 1)])
    assert instrument.extract_answers(v11)[0] == p10(global08=4, global10=5)
    assert instrument.extract_answers(v12)[0] == p10(global08=2, global10=1)


def test_v11_panel_reverses_ordinals_but_not_loinc_answer_meaning(
    registry: InstrumentRegistry,
) -> None:
    """A v1.1 form (panel 61576-5) whose fatigue ordinal is 2 for 'Mild' means 4 in v1.2
    terms; an answer carrying the LOINC code for 'Mild' is 4 whatever the form's ordinal."""
    instrument = registry["promis10"]
    by_ordinal = response(
        [coded("fatigue", "local-mild", 2, system="urn:site")],
        "http://loinc.org/q/61576-5",
    )
    by_code = response([coded("fatigue", "LA6752-5", 2)], "http://loinc.org/q/61576-5")
    assert instrument.extract_answers(by_ordinal)[0]["global08"] == 4
    assert instrument.extract_answers(by_code)[0]["global08"] == 4


def test_answer_value_sources(registry: InstrumentRegistry) -> None:
    """Ordinal from the LOINC answer code, the ordinalValue or itemWeight extension, or the
    code itself."""
    instrument = registry["promis10"]
    qr = response(
        [
            # LOINC code known to the instrument, no extension: "Very good" = 4.
            {
                "linkId": "Global01",
                "answer": [{"valueCoding": {"system": "http://loinc.org", "code": "LA13913-1"}}],
            },
            # Unknown site code with an ordinalValue extension.
            coded("Global02", "site-3", 3, system="urn:site"),
            # Unknown site code with the newer itemWeight extension.
            coded("Global03", "site-2", 2, system="urn:site", extension_url=ITEM_WEIGHT),
            # Numeric code, no extension.
            coded("Global04", "5", system="urn:site"),
        ]
    )
    answers, issues = instrument.extract_answers(qr)
    assert issues == []
    assert (answers["global01"], answers["global02"], answers["global03"], answers["global04"]) == (
        4,
        3,
        2,
        5,
    )


def test_unscorable_code_is_reported_with_its_code(registry: InstrumentRegistry) -> None:
    qr = response([coded("Global01", "site-x", system="urn:site")])
    answers, issues = registry["promis10"].extract_answers(qr)
    assert answers["global01"] is None
    assert [(i.code, i.item) for i in issues] == [("prom.unreadable_answer", "Global01")]
    assert "site-x" in issues[0].message


def test_out_of_range_on_a_reversed_item_quotes_the_value_sent(
    registry: InstrumentRegistry,
) -> None:
    answers, issues = registry["promis10"].extract_answers(response([integer("Global10", 7)]))
    assert answers["global10"] is None
    assert [(i.code, i.item) for i in issues] == [("prom.value_out_of_range", "Global10")]
    assert "answer 7 " in issues[0].message
