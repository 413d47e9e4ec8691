"""Answer extraction edge cases: nesting, missing, duplicates, status, PHI in messages."""

from __future__ import annotations

from mappings.proms import InstrumentRegistry
from tests.proms.conftest import integer, response


def test_nested_groups_and_answer_items(registry: InstrumentRegistry) -> None:
    """Items inside groups (item.item) and under an answer (answer.item) are both read."""
    qr = response(
        [
            {"linkId": "section-a", "item": [integer(f"odi-{n}", 2) for n in range(1, 6)]},
            {
                "linkId": "section-b",
                "item": [
                    {
                        "linkId": "has-sex-life",
                        "answer": [{"valueBoolean": True, "item": [integer("odi-8", 3)]}],
                    },
                    *[integer(f"odi-{n}", 1) for n in (6, 7, 9, 10)],
                ],
            },
        ]
    )
    odi = registry["odi"]
    answers, issues = odi.extract_answers(qr)
    assert answers == {
        "odi1": 2,
        "odi2": 2,
        "odi3": 2,
        "odi4": 2,
        "odi5": 2,
        "odi6": 1,
        "odi7": 1,
        "odi8": 3,
        "odi9": 1,
        "odi10": 1,
    }
    # The yes/no question is not an ODI item: a warning naming only its linkId.
    assert [(i.code, i.item, i.severity) for i in issues] == [
        ("prom.unknown_item", "has-sex-life", "warning")
    ]
    assert odi.score(answers).scores == {"odi": 34.0}


def test_all_missing(registry: InstrumentRegistry) -> None:
    odi = registry["odi"]
    answers, issues = odi.extract_answers(response([{"linkId": "odi-1"}]))
    assert set(answers.values()) == {None}
    assert issues == []
    result = odi.score(answers)
    assert result.scores == {"odi": None}
    assert result.answered == 0
    assert [issue.code for issue in result.issues] == ["prom.no_answers"]


def test_free_text_is_never_quoted(registry: InstrumentRegistry) -> None:
    secret = "Jane Doe, MRN 123456, lives at 1 Main St"
    qr = response([{"linkId": "odi-1", "answer": [{"valueString": secret}]}])
    answers, issues = registry["odi"].extract_answers(qr)
    assert answers["odi1"] is None
    assert [(i.code, i.item) for i in issues] == [("prom.unreadable_answer", "odi-1")]
    assert all(secret not in i.message and "Jane" not in i.message for i in issues)


def test_numeric_string_and_site_answer_strings() -> None:
    from mappings.proms import load_instruments

    registry = load_instruments(
        site_overrides={
            "odi": {"items": {"odi1": {"answer_map": {"The pain is moderate at the moment.": 2}}}}
        }
    )
    qr = response(
        [
            {"linkId": "odi-1", "answer": [{"valueString": "The pain is moderate at the moment."}]},
            {"linkId": "odi-2", "answer": [{"valueString": "3"}]},
        ]
    )
    answers, issues = registry["odi"].extract_answers(qr)
    assert (answers["odi1"], answers["odi2"], issues) == (2, 3, [])


def test_multiple_answers_to_one_item_are_rejected(registry: InstrumentRegistry) -> None:
    qr = response([{"linkId": "odi-3", "answer": [{"valueInteger": 2}, {"valueInteger": 4}]}])
    answers, issues = registry["odi"].extract_answers(qr)
    assert answers["odi3"] is None
    assert [(i.code, i.item) for i in issues] == [("prom.multiple_answers", "odi-3")]


def test_same_item_twice_keeps_the_first(registry: InstrumentRegistry) -> None:
    qr = response([integer("odi-3", 2), integer("ODI_3", 4)])
    answers, issues = registry["odi"].extract_answers(qr)
    assert answers["odi3"] == 2
    assert [(i.code, i.item) for i in issues] == [("prom.duplicate_item", "ODI_3")]


def test_link_ids_match_case_insensitively(registry: InstrumentRegistry) -> None:
    answers, issues = registry["promis10"].extract_answers(response([integer("GLOBAL03", 4)]))
    assert (answers["global03"], issues) == (4, [])


def test_unsupported_value_type_and_not_completed_status(registry: InstrumentRegistry) -> None:
    qr = response(
        [{"linkId": "odi-1", "answer": [{"valueDate": "2026-01-01"}]}], status="in-progress"
    )
    answers, issues = registry["odi"].extract_answers(qr)
    assert answers["odi1"] is None
    assert [(i.code, i.severity) for i in issues] == [
        ("prom.not_completed", "warning"),
        ("prom.unreadable_answer", "error"),
    ]
    assert "valueDate" in issues[1].message


def test_score_rejects_unknown_item_ids(registry: InstrumentRegistry) -> None:
    result = registry["nrs_arm"].score({"pain": 4, "itching": 2})
    assert result.scores == {"nrs": 4.0}
    assert [(i.code, i.item) for i in result.issues] == [("prom.unknown_item", "itching")]
