"""PROM forms as hospitals send them, through the QuestionnaireResponse mapping (prom_score hook)."""

from __future__ import annotations

from typing import Any

import pytest

from mappings.proms import load_instruments
from registry_adapter.app import App
from tests.proms.conftest import coded, integer, response

PACIO_ODI = "http://example.org/Questionnaire/OswestryDisabilityIndexQuestionnaire"
PACIO_NDI = "http://example.org/fhir/Questionnaire/NeckDisabilityIndexQuestionnaire"
ODI = "https://registry-adapter.invalid/fhir/Questionnaire/odi"

# PACIO sample OswestryDisabilityIndexExample1 (paciowg/sample-data-fsh): the statement itself
# as valueString, the form's own total under "score" (36).
PACIO_ODI_ANSWERS = [
    "The pain is moderate at the moment.",
    "I can look after myself normally but it is very painful.",
    "Pain prevents me lifting heavy weights off the floor, but I can manage if they are "
    "conveniently placed e.g. on a table.",
    "Pain prevents me from walking more than one mile.",
    "Pain prevents me from sitting for more than one hour.",
    "Pain prevents me from standing for more than 1 hour.",
    "My sleep is occasionally interrupted by pain.",
    "My sex life is nearly normal but is very painful.",
    "Pain has restricted my social life and I do not go out as often.",
    "Pain is bad but I am able to manage trips over two hours.",
]


def _map(app: App, qr: dict[str, Any]) -> Any:
    return app.mappings["QuestionnaireResponse"].map(qr, app.site)


def _odi(values: list[int | None], **extra: Any) -> dict[str, Any]:
    items = [integer(f"odi-{n}", v) for n, v in enumerate(values, 1) if v is not None]
    return response(items, ODI, **extra)


def test_recognised_but_unscorable_response_is_stored_with_a_review_error(sqlite_app: App) -> None:
    result = _map(sqlite_app, _odi([2, 3, 1, None, 2, None, 1, None, 2, 2]))
    # Stored: the patient answered, so the time point is complete (no reminder).
    assert result.disposition == "mapped", result.issues
    assert result.row["instrument"] == "odi" and result.row["scores"] == {"odi": None}
    errors = [i for i in result.issues if i.severity == "error"]
    assert [i.code for i in errors] == ["prom.not_scorable"]
    assert "odi4, odi6, odi8" in errors[0].message and "at most 1 allowed" in errors[0].message


def test_pacio_odi_layout_scores_from_the_answer_text(sqlite_app: App) -> None:
    items = [
        {"linkId": f"odi-{n}", "answer": [{"valueString": text}]}
        for n, text in enumerate(PACIO_ODI_ANSWERS, 1)
    ]
    items.append({"linkId": "score", "answer": [{"valueDecimal": 36}]})
    items.append({"linkId": "severity-category", "answer": [{"valueString": "Moderate disability"}]})
    result = _map(sqlite_app, response(items, PACIO_ODI))
    assert result.disposition == "mapped", result.issues
    assert result.row["scores"] == {"odi": 36.0}
    assert result.row["answers"]["odi_reported"] == 36.0
    assert result.issues == []


def test_ndi_loinc_answer_codes_score_without_an_ordinal(sqlite_app: App) -> None:
    # PACIO NeckDisabilityIndexExample1's LA codes, sent the way many EHRs do: no ordinalValue.
    codes = ["LA25855-0", "LA25860-0", "LA25867-5", "LA25873-3", "LA26367-5"]
    codes += ["LA25880-8", "LA25886-5", "LA25892-3", "LA25898-0", "LA25904-6"]
    items = [coded(f"ndi-{n}", code) for n, code in enumerate(codes, 1)]
    items.append({"linkId": "total-score", "answer": [{"valueDecimal": 40}]})
    result = _map(sqlite_app, response(items, PACIO_NDI))
    assert result.disposition == "mapped", result.issues
    assert result.row["scores"]["ndi"] == 40.0 and result.row["scores"]["ndi_raw"] == 20.0
    assert result.issues == []


def test_eq5d5l_with_hyphenated_link_ids(sqlite_app: App) -> None:
    names = ["mobility", "self-care", "usual-activities", "pain-discomfort", "anxiety-depression"]
    items = [integer(name, level) for name, level in zip(names, [2, 1, 3, 5, 4], strict=True)]
    items.append(integer("eq-vas", 70))
    result = _map(sqlite_app, response(items))
    assert result.row.get("instrument") == "eq5d5l", result.issues
    # US value set (Pickard 2019): 1 - 0.096 - 0.101 - 0.414 - 0.299
    assert result.row["scores"] == {"index": 0.09, "vas": 70.0}


def test_link_ids_match_ignoring_case_dashes_underscores_and_spaces(sqlite_app: App) -> None:
    spellings = ["ODI 1", "Odi_2", "odi-3", "ODI-4", "odi 5", "ODI_6", "Odi7", "odi - 8", "ODI9", "odi_10"]
    items = [integer(link_id, 1) for link_id in spellings]
    result = _map(sqlite_app, response(items, ODI))
    assert result.row["scores"] == {"odi": 20.0}, result.issues
    assert result.issues == []


def test_vendor_form_with_numeric_link_ids_is_taught_by_a_site_setting() -> None:
    vendor = "https://ehr.hospital.example/Questionnaire/back-form-7"
    qr = response([integer(str(n), 2) for n in range(1, 11)] + [integer("11", 40)], vendor)
    assert load_instruments().recognise(qr) is None
    link_ids = {**{str(n): f"odi{n}" for n in range(1, 11)}, "11": "odi"}
    form = {"url": vendor, "link_ids": link_ids}
    taught = load_instruments(site_overrides={"odi": {"recognition": {"questionnaires": [form]}}})
    instrument = taught.recognise(qr)
    assert instrument is not None and instrument.id == "odi"
    answers, issues = instrument.extract_answers(qr)
    assert issues == [] and instrument.score(answers).scores == {"odi": 40.0}
    assert instrument.reported_totals(qr) == {"odi": 40.0}
    # The numbering belongs to that form only: another ODI form's "1" is not odi1.
    assert taught["odi"].item_for("1") is None


def test_hospital_total_is_kept_and_a_mismatch_is_a_warning(sqlite_app: App) -> None:
    qr = _odi([1] * 10)
    qr["item"].append({"linkId": "odi-score", "answer": [{"valueDecimal": 30}]})
    result = _map(sqlite_app, qr)
    assert result.disposition == "mapped"
    assert result.row["scores"] == {"odi": 20.0} and result.row["answers"]["odi_reported"] == 30.0
    assert [(i.code, i.severity) for i in result.issues] == [("prom.total_mismatch", "warning")]
    assert "30" in result.issues[0].message and "20" in result.issues[0].message


def test_unknown_questionnaire_names_the_setting_and_the_link_ids_seen(sqlite_app: App) -> None:
    qr = response([integer("Q1", 3), integer("Q2", 4)], "https://ehr.example/Questionnaire/x")
    result = _map(sqlite_app, qr)
    assert result.disposition == "failed"
    [issue] = result.issues
    assert issue.code == "prom.unknown_instrument"
    assert "proms.instruments" in issue.message and "linkIds seen: Q1, Q2" in issue.message


def test_one_problem_is_one_cause_and_causes_never_mix_instruments(sqlite_app: App) -> None:
    # Ten answers with a code that has no score and no ordinal: one cause, not ten.
    odi = response([coded(f"odi-{n}", "X-UNKNOWN") for n in range(1, 11)], ODI)
    odi_issues = _map(sqlite_app, odi).issues
    unreadable = [i for i in odi_issues if i.code == "prom.unreadable_answer"]
    assert len(unreadable) == 1 and unreadable[0].message.startswith("odi: 10 items:")
    ndi = response([coded(f"ndi-{n}", "X-UNKNOWN") for n in range(1, 11)], PACIO_NDI)
    ndi_issues = _map(sqlite_app, ndi).issues
    ndi_unreadable = [i for i in ndi_issues if i.code == "prom.unreadable_answer"]
    # The cause is (code, mapping, value): the value names the instrument.
    assert unreadable[0].value == "odi" and ndi_unreadable[0].value == "ndi"
    assert all(i.message.startswith("ndi:") for i in ndi_issues)


@pytest.mark.parametrize("status", [["completed"], 5, {"value": "completed"}])
def test_status_of_the_wrong_json_type_is_never_an_internal_error(sqlite_app: App, status: Any) -> None:
    result = _map(sqlite_app, _odi([1] * 10, status=status))
    assert all(i.code != "mapping.internal_error" for i in result.issues), result.issues
