"""The FHIRPath compiler: syntax errors, semantics on plain dicts, and agreement with
fhirpathpy (a real, independent implementation) on the expressions mappings use."""

from __future__ import annotations

from typing import Any

import fhirpathpy
import pytest
from fhirpathpy.models import models

from mappings.fhirpath import (
    FHIRPathEvaluationError,
    FHIRPathSyntaxError,
    compile_expression,
    compile_path,
)

CPT = "http://www.ama-assn.org/go/cpt"
SCT = "http://snomed.info/sct"

PROCEDURE: dict[str, Any] = {
    "resourceType": "Procedure",
    "id": "proc-1",
    "extension": [
        {"url": "http://example.org/blood-loss", "valueDecimal": 250.5},
        {"url": "http://example.org/approach", "valueCode": "posterior"},
    ],
    "status": "completed",
    "code": {"coding": [{"system": CPT, "code": "22633", "display": "Arthrodesis"},
                        {"system": SCT, "code": "609588000"}]},
    "subject": {"reference": "Patient/pat-7"},
    "encounter": {"reference": "http://ehr.example.org/fhir/Encounter/enc-3/_history/2"},
    "performedDateTime": "2024-03-14T08:30:00-05:00",
    "bodySite": [{"coding": [{"system": SCT, "code": "122496007"}]}],
    "reasonReference": [{"reference": "Condition/c1"}, {"reference": "Condition/c2"}],
    "note": [{"text": "first"}, {"text": "second"}],
}

PERIOD_PROCEDURE: dict[str, Any] = {
    "resourceType": "Procedure",
    "id": "proc-2",
    "status": "completed",
    "performedPeriod": {"start": "2024-03-15T09:00:00Z", "end": "2024-03-15T11:00:00Z"},
    "subject": {"reference": "urn:uuid:4f6a1c2e-0000-4000-8000-000000000001"},
}

QUESTIONNAIRE_RESPONSE: dict[str, Any] = {
    "resourceType": "QuestionnaireResponse",
    "id": "qr-1",
    "status": "completed",
    "item": [
        {"linkId": "odi-1", "answer": [{"valueCoding": {"system": "http://loinc.org",
                                                        "code": "LA1"}}]},
        {"linkId": "odi-2", "answer": [{"valueInteger": 3}]},
        {"linkId": "comment", "answer": [{"valueString": "fine"}]},
    ],
}

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "pt1",
    "active": True,
    "gender": "female",
    "birthDate": "1970-06",
    "deceasedBoolean": False,
    "name": [{"use": "official", "family": "Doe", "given": ["Jane", "Q"]},
             {"use": "nickname", "given": ["JJ"]}],
    "multipleBirthInteger": 2,
}


def ev(expr: str, resource: Any = PROCEDURE, **constants: Any) -> list[Any]:
    return compile_path(expr, constants=constants)(resource)


# -- syntax errors ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expr", "position", "reason"),
    [
        ("name.where(", 11, "unexpected end of expression"),
        ("a b", 2, "unexpected 'b'"),
        ("name.family..x", 12, "expected a name"),
        ("1 +", 3, "unexpected end of expression"),
        ("@@", 0, "malformed date/time literal"),
        ("'open", 0, "unterminated quoted text"),
        ("name[", 5, "unexpected end of expression"),
        ("count() and", 11, "unexpected end of expression"),
        ("5 'mg'", 0, "quantity literals are not supported"),
        ("name.frobnicate()", 5, "unknown or unsupported function frobnicate()"),
        ("name.where(use = %missing)", 17, "undefined constant %missing"),
        ("first(1)", 0, "first() takes 0 argument(s), got 1"),
        ("value.first().ofType(Coding)", 14, "must follow an element name"),
        ("$index", 0, "$index is not supported"),
        ("name.matches('[')", 13, "invalid regular expression"),
        ("value.ofType(Codeing)", 13, "unknown type 'Codeing'"),
        ("subject.getReferenceKey(Pateint)", 24, "unknown type 'Pateint'"),
    ],
)
def test_syntax_errors_name_reason_and_position(expr: str, position: int, reason: str) -> None:
    with pytest.raises(FHIRPathSyntaxError) as info:
        compile_path(expr)
    assert info.value.position == position
    assert reason in str(info.value)
    assert repr(expr) in str(info.value)


def test_empty_expression_is_a_syntax_error() -> None:
    with pytest.raises(FHIRPathSyntaxError, match="empty expression"):
        compile_path("  ")


# -- navigation and choice types -----------------------------------------------------------------
def test_paths_flatten_collections() -> None:
    assert ev("code.coding.code") == ["22633", "609588000"]
    assert ev("note.text") == ["first", "second"]
    assert ev("Procedure.status") == ["completed"]
    assert ev("Patient.status") == []  # a type name at the start filters by resourceType
    assert ev("missing.element") == []


def test_choice_element_found_by_base_name_and_picked_by_of_type() -> None:
    assert ev("performed") == ["2024-03-14T08:30:00-05:00"]
    assert ev("performed.ofType(dateTime)") == ["2024-03-14T08:30:00-05:00"]
    assert ev("performed.ofType(Period)") == []
    assert ev("performed.ofType(Period).start", PERIOD_PROCEDURE) == ["2024-03-15T09:00:00Z"]
    expr = "performed.ofType(dateTime) | performed.ofType(Period).start"
    assert ev(expr) == ["2024-03-14T08:30:00-05:00"]
    assert ev(expr, PERIOD_PROCEDURE) == ["2024-03-15T09:00:00Z"]
    assert ev("deceased.ofType(boolean)", PATIENT) == [False]
    assert ev("multipleBirth", PATIENT) == [2]
    assert ev("value as Quantity", {"valueAge": {"value": 40, "unit": "a"}}) == [
        {"value": 40, "unit": "a"}  # Age is a Quantity
    ]


def test_of_type_on_a_plain_element_checks_the_value() -> None:
    identifier = {"value": "MRN-1", "system": "urn:x"}
    assert ev("value.ofType(string)", identifier) == ["MRN-1"]
    assert ev("value.ofType(integer)", identifier) == []
    assert ev("contained.ofType(Condition).id",
              {"contained": [{"resourceType": "Condition", "id": "c"},
                             {"resourceType": "Device", "id": "d"}]}) == ["c"]


def test_questionnaire_answers_by_link_id() -> None:
    qr = QUESTIONNAIRE_RESPONSE
    assert ev("item.where(linkId='odi-1').answer.value.ofType(Coding).code", qr) == ["LA1"]
    assert ev("item.where(linkId='odi-2').answer.value.ofType(integer)", qr) == [3]
    assert ev("item.where(linkId='odi-2').answer.value.ofType(Coding)", qr) == []
    assert ev("item.answer.value.ofType(string)", qr) == ["fine"]
    assert ev("item.where(linkId='odi-9').answer.value.exists()", qr) == [False]


def test_extensions_by_url() -> None:
    assert ev("extension('http://example.org/blood-loss').value.ofType(decimal)") == [250.5]
    assert ev("extension('http://example.org/approach').value.ofType(code)") == ["posterior"]
    assert ev("extension('http://example.org/absent').value") == []
    assert ev("extension.where(url = 'http://example.org/approach').exists()") == [True]


def test_indexer_and_subsetting() -> None:
    assert ev("note[1].text") == ["second"]
    assert ev("note[5].text") == []
    assert ev("note.text.first()") == ["first"]
    assert ev("note.text.last()") == ["second"]
    assert ev("note.text.tail()") == ["second"]
    assert ev("note.text.skip(1)") == ["second"]
    assert ev("note.text.take(1)") == ["first"]
    assert ev("note[%i].text", i=0) == ["first"]


# -- functions --------------------------------------------------------------------------------
def test_registry_rule_expressions() -> None:
    assert ev(f"code.coding.where(system='{CPT}').code") == ["22633"]
    assert ev("code.coding.where(system = %cpt).code.first()", cpt=CPT) == ["22633"]
    assert ev("code.coding.count()") == [2]
    assert ev("note.exists()") == [True]
    assert ev("note.empty()") == [False]
    assert ev("code.coding.exists(system = 'http://snomed.info/sct')") == [True]
    assert ev("code.coding.all(code.exists())") == [True]
    assert ev("code.coding.select(system & '|' & code).join(',')") == [
        f"{CPT}|22633,{SCT}|609588000"
    ]


def test_where_on_several_values_uses_collection_equality() -> None:
    # name.given has two values for the first name: "given = 'Jane'" is false, not an error.
    assert ev("name.where(given = 'Jane').use", PATIENT) == []
    assert ev("name.where(given contains 'Jane').use", PATIENT) == ["official"]
    assert ev("name.where(given.first() = 'Jane').use", PATIENT) == ["official"]


def test_reference_keys() -> None:
    assert ev("getResourceKey()") == ["proc-1"]
    assert ev("subject.getReferenceKey()") == ["pat-7"]
    assert ev("subject.getReferenceKey(Patient)") == ["pat-7"]
    assert ev("subject.getReferenceKey(Group)") == []
    assert ev("encounter.getReferenceKey(Encounter)") == ["enc-3"]  # absolute, versioned
    assert ev("reasonReference.getReferenceKey(Condition)") == ["c1", "c2"]
    uuid = "4f6a1c2e-0000-4000-8000-000000000001"
    assert ev("subject.getReferenceKey(Patient)", PERIOD_PROCEDURE) == [uuid]
    assert ev("getReferenceKey()", {"reference": "#contained-1"}) == []
    with pytest.raises(FHIRPathSyntaxError, match="expects a resource type"):
        compile_path("subject.getReferenceKey(Coding)")


def test_join_and_strings() -> None:
    assert ev("name.given.join(' ')", PATIENT) == ["Jane Q JJ"]
    assert ev("name.given.join()", PATIENT) == ["JaneQJJ"]
    assert ev("name.family.join(',')", {"resourceType": "Patient"}) == [""]
    assert ev("gender.upper()", PATIENT) == ["FEMALE"]
    assert ev("gender.substring(1, 3)", PATIENT) == ["ema"]
    assert ev("gender.startsWith('fe')", PATIENT) == [True]
    assert ev("gender.matches('^f.*e$')", PATIENT) == [True]
    assert ev("gender.replace('fe', '')", PATIENT) == ["male"]
    assert ev("gender.length()", PATIENT) == [6]
    assert ev("'a\\'b\\u0041'") == ["a'bA"]
    with pytest.raises(FHIRPathEvaluationError, match="single value"):
        ev("name.given.upper()", PATIENT)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("birthDate.lowBoundary()", "1970-06-01"),
        ("birthDate.highBoundary()", "1970-06-30"),
        ("@2024-02.highBoundary()", "2024-02-29"),
        ("performed.ofType(dateTime).lowBoundary()", "2024-03-14T08:30:00.000-05:00"),
        ("@2010-10-10T.highBoundary()", "2010-10-10T23:59:59.999-12:00"),
        ("@T12:34.highBoundary()", "12:34:59.999"),
        ("1.0.lowBoundary()", 0.95),
        ("1.587.highBoundary(2)", 1.59),
        ("1.587.lowBoundary(2)", 1.58),
        ("(-1.0).lowBoundary()", -1.05),
    ],
)
def test_boundaries(expr: str, expected: Any) -> None:
    resource = PATIENT if expr.startswith("birthDate") else PROCEDURE
    assert ev(expr, resource) == [expected]


# -- operators --------------------------------------------------------------------------------
def test_equality_never_mixes_booleans_and_numbers() -> None:
    assert ev("active = true", PATIENT) == [True]
    assert ev("multipleBirth = true", PATIENT) == [False]
    assert ev("multipleBirth = 2.0", PATIENT) == [True]
    assert ev("missing = 1", PATIENT) == []
    assert ev("name.given = name.given", PATIENT) == [True]


def test_three_valued_logic() -> None:
    assert ev("missing and false") == [False]
    assert ev("missing and true") == []
    assert ev("missing or true") == [True]
    assert ev("missing.not()") == []
    assert ev("(1 = 1) xor (1 = 2)") == [True]
    assert ev("(1 = 2) implies missing") == [True]
    assert ev("iif(status = 'completed', 'done', 'open')") == ["done"]
    assert ev("iif(missing, 'yes', 'no')") == ["no"]
    # A single non-Boolean counts as true; 0 and 1 are not false and true.
    assert ev("0 and true") == [True]
    assert ev("1 or false") == [True]
    assert ev("0 or false") == [True]


def test_arithmetic_and_comparison() -> None:
    assert ev("1 + 2 * 3") == [7]
    assert ev("(1 + 2) * 3") == [9]
    assert ev("7 / 2") == [3.5]
    assert ev("7 div 2") == [3]
    assert ev("7 mod 2") == [1]
    assert ev("1 / 0") == []
    assert ev("-2 + 5") == [3]
    assert ev("'a' + 'b'") == ["ab"]
    assert ev("'a' & missing") == ["a"]
    assert ev("2 > 1 and 'b' >= 'a'") == [True]
    with pytest.raises(FHIRPathEvaluationError, match="expects a single value"):
        ev("note.text > 'a'")
    with pytest.raises(FHIRPathEvaluationError, match="cannot compare"):
        ev("1 < 'a'")


def test_date_comparison_respects_zones_and_precision() -> None:
    assert ev("performed > @2024-03-14T13:00:00Z") == [True]  # 08:30-05:00 is 13:30Z
    assert ev("performed < @2024-03-14T14:00:00+00:00") == [True]
    assert ev("@2024-03 < @2024-04-01") == [True]
    assert ev("@2024-03 < @2024-03-10") == []  # different precision, same month: unknown


def test_union_deduplicates_combine_does_not() -> None:
    assert ev("name.use | name.use", PATIENT) == ["official", "nickname"]
    assert ev("name.use.combine(name.use)", PATIENT) == ["official", "nickname"] * 2
    assert ev("('a' | 'b') contains 'b'") == [True]
    assert ev("'c' in ('a' | 'b')") == [False]


def test_is_and_as() -> None:
    assert ev("performed is dateTime") == [True]
    assert ev("performed is Period") == [False]
    assert ev("performed.is(dateTime)") == [True]
    assert ev("%resource.id") == ["proc-1"]
    assert ev("$this.status") == ["completed"]
    assert ev("%sct") == [SCT]


def test_where_criteria_with_several_values_is_an_error() -> None:
    with pytest.raises(FHIRPathEvaluationError, match="where"):
        ev("name.where(given)", PATIENT)


def test_compiled_function_is_reusable_and_does_not_touch_input() -> None:
    fn = compile_path("name.given")
    first = fn(PATIENT)
    first.append("mutated")
    assert fn(PATIENT) == ["Jane", "Q", "JJ"]
    assert PATIENT["name"][0]["given"] == ["Jane", "Q"]


def test_static_types_reach_the_caller() -> None:
    assert compile_expression("performedDateTime").type_name == "dateTime"
    assert compile_expression("value.ofType(Quantity)").type_name == "Quantity"
    assert compile_expression("name.exists() and active").type_name == "boolean"
    assert compile_expression("name.family").type_name is None


def test_row_index_variable_comes_from_env() -> None:
    fn = compile_expression("%rowIndex + 1", variables=frozenset({"rowIndex"})).fn
    assert fn([PATIENT], {"resource": PATIENT, "rowIndex": 4}) == [5]
    with pytest.raises(FHIRPathSyntaxError, match="undefined constant %rowIndex"):
        compile_path("%rowIndex")


# -- agreement with fhirpathpy --------------------------------------------------------------------
AGREEMENT = [
    (PROCEDURE, f"code.coding.where(system='{CPT}').code"),
    (PROCEDURE, "code.coding.where(system='http://snomed.info/sct').code.first()"),
    (PROCEDURE, "performed.ofType(dateTime)"),
    (PERIOD_PROCEDURE, "performed.ofType(Period).start"),
    (PROCEDURE, "bodySite.coding.code"),
    (PROCEDURE, "reasonReference.reference.first()"),
    (PROCEDURE, "note.exists()"),
    (PROCEDURE, "note.count()"),
    (PROCEDURE, "extension('http://example.org/blood-loss').value.ofType(decimal)"),
    (PROCEDURE, "code.coding.where(system = 'x' or code = '22633').display"),
    (PROCEDURE, "subject.reference.startsWith('Patient/')"),
    (PATIENT, "name.where(use = 'official').given.join(' ')"),
    (PATIENT, "name.given.first()"),
    (PATIENT, "deceased.ofType(boolean) = false"),
    (PATIENT, "name.use | name.use"),
    (PATIENT, "name[1].given"),
    (PATIENT, "(gender = 'male').not()"),
    (PATIENT, "name.family.empty()"),
    (PATIENT, "iif(active, 'a', 'b')"),
    (QUESTIONNAIRE_RESPONSE, "item.where(linkId='odi-1').answer.value.ofType(Coding).code"),
    (QUESTIONNAIRE_RESPONSE, "item.answer.value.ofType(integer)"),
    (QUESTIONNAIRE_RESPONSE, "item.linkId.count() > 2"),
    (QUESTIONNAIRE_RESPONSE, "item.select(linkId)"),
]


@pytest.mark.parametrize(("resource", "expr"), AGREEMENT, ids=[e for _, e in AGREEMENT])
def test_agrees_with_fhirpathpy(resource: dict[str, Any], expr: str) -> None:
    theirs = fhirpathpy.evaluate(resource, expr, {}, models["r4"])
    assert compile_path(expr)(resource) == theirs


def test_bad_arguments_taken_from_data_fail_without_quoting_them() -> None:
    with pytest.raises(FHIRPathEvaluationError) as info:
        ev("code.matches(system)", {"code": "a", "system": "[Smith"})
    assert "matches() got an argument it cannot use" in str(info.value)
    assert "Smith" not in str(info.value)


# -- compiled fast paths (same results as the general rules) -----------------------------------
RULE_ROWS: list[dict[str, Any]] = [
    {"status": "completed"},
    {"status": "stopped"},
    {},
    {"status": None},
    {"status": ["completed"]},  # one value in a list: still a single value
    {"status": ["completed", "stopped"]},  # several values: '=' is false, not an error
    {"status": 3},
    {"status": True},
    {"status": {"text": "completed"}},
]


@pytest.mark.parametrize("row", RULE_ROWS, ids=repr)
@pytest.mark.parametrize("expr", [
    "status = 'entered-in-error' or status = 'not-done'",
    "status = 'preparation' or status = 'stopped' or status = 'completed'",
    "'stopped' = status or status = 'completed'",
    "status = 'completed' or missing = 'x'",
    "missing = 'x' or status = 'stopped'",
    "status = 'completed' and missing = 'x'",
    "status != 'x' and status = 'completed' and status.exists()",
    "status = %done or status = 'stopped'",
])
def test_rule_chains_agree_with_fhirpathpy(row: dict[str, Any], expr: str) -> None:
    # status = 'a' or status = 'b' becomes one set lookup when status is a string; every
    # other shape of data must give what the general three-valued rules give.
    theirs = fhirpathpy.evaluate(row, expr, {"done": "completed"})
    assert ev(expr, row, done="completed") == theirs


def test_logic_chains_keep_short_cuts_and_singleton_rules() -> None:
    # JSON null in a primitive array is no value (fhirpathpy counts it as one).
    assert ev("status = 'a' or status = 'stopped'", {"status": [None, "stopped"]}) == [True]
    assert ev("missing = 'x' or status = 'zz'") == []
    assert ev("missing = 'x' and status = 'zz'") == [False]
    assert ev("status = 'completed' or note.text > 'a'") == [True]  # right side not evaluated
    with pytest.raises(FHIRPathEvaluationError, match="expects a single value"):
        ev("status = 'zz' or note.text > 'a'")
    assert ev("status or false") == [True]  # a single non-Boolean counts as true
    with pytest.raises(FHIRPathEvaluationError, match="expects a single value"):
        ev("note.text or false")
    assert ev("(status = 'a' or status = 'b') or (id = 'proc-1' or id = 'x')") == [True]
    assert ev("status = 'completed' and (id = 'x' or id = 'proc-1')") == [True]


def test_string_equality_with_date_like_literals_keeps_precision_rules() -> None:
    # '1970-06' and '1970-06-01' have different precisions: equality is unknown, not false.
    assert ev("birthDate = '1970-06-01'", PATIENT) == []
    assert ev("birthDate = '1970-06-01' or birthDate = '1971'", PATIENT) == []
    assert ev("birthDate = '1970-06' or birthDate = '1971'", PATIENT) == [True]
    assert ev("'1970-06-01' = birthDate", PATIENT) == []


def test_equality_fast_path_needs_one_input_item() -> None:
    rule = compile_path("status = 'stopped' or status = 'completed'")
    assert rule([{"status": "completed"}]) == [True]
    # Two input items: status has two values, so neither equality holds.
    assert rule([{"status": "completed"}, {"status": "stopped"}]) == [False]
    assert rule(["completed"]) == []  # a string has no elements
    assert ev("name.where(use = 'usual' or use = 'official').given", PATIENT) == ["Jane", "Q"]


def test_member_paths_through_objects_lists_and_nulls() -> None:
    data = {
        "a": [{"b": {"c": 1}}, None, {"b": [{"c": 2}, {"c": None}, "text"]}, "text"],
        "d": {"e": ["x", None, "y"], "f": "plain", "valueString": "s"},
        "g": {"h": {"valueQuantity": {"value": 5}}},
    }
    assert ev("a.b.c", data) == [1, 2]
    assert ev("d.e", data) == ["x", "y"]
    assert ev("d.f.g", data) == []  # a string has no elements
    assert ev("d.value", data) == ["s"]  # choice element at a later step
    assert ev("g.h.value.value", data) == [5]
    assert ev("d.missing.e", data) == []
    assert compile_path("b")([{"b": 1}, {"b": [2, None, 3]}, "x"]) == [1, 2, 3]
    assert compile_path("b.c")([{"b": {"c": 1}}, {"b": [{"c": 2}]}]) == [1, 2]
    assert compile_path("b")([]) == []
    assert compile_path("b")(["x"]) == []
    # One-item arrays on the way.
    assert ev("a.b.c", {"a": [{"b": [{"c": 3}]}]}) == [3]
    assert ev("a.b", {"a": [None]}) == []
    assert ev("a.b", {"a": ["x"]}) == []
    assert ev("a.b", {"a": [[{"b": 1}]]}) == []  # a list inside a list is not an element
    assert ev("a.b", {"a": [{"b": [None]}]}) == []


def test_member_path_results_are_copies() -> None:
    resource = {"code": {"coding": [{"code": "a"}]}, "tags": ["t1"]}
    for expr in ("code.coding", "tags"):
        result = ev(expr, resource)
        result.append("mutated")
    assert resource == {"code": {"coding": [{"code": "a"}]}, "tags": ["t1"]}


@pytest.mark.parametrize(("resource", "expr"), [
    (PROCEDURE, "performed.ofType(dateTime) | performed.ofType(Period).start"),
    (PERIOD_PROCEDURE, "performed.ofType(dateTime) | performed.ofType(Period).start"),
    (PROCEDURE, "performed.ofType(Period).start"),
    (PERIOD_PROCEDURE, "(performed as Period).end"),
    (PERIOD_PROCEDURE, "performed.as(Period).start"),
    (QUESTIONNAIRE_RESPONSE, "item.answer.value.ofType(Coding).code"),
    (QUESTIONNAIRE_RESPONSE, "item.answer.value.ofType(Coding).system | item.linkId"),
    (PROCEDURE, "note.text | note.text"),
    (PROCEDURE, f"code.coding.where(system = '{SCT}').code"),
    (PROCEDURE, f"code.coding.where('{CPT}' = system).code.first()"),
    (PROCEDURE, "code.coding.where(code = '609588000').system.last()"),
    (PROCEDURE, "reasonReference.reference.tail()"),
], ids=lambda x: x if isinstance(x, str) else x["id"])
def test_fused_paths_agree_with_fhirpathpy(resource: dict[str, Any], expr: str) -> None:
    theirs = fhirpathpy.evaluate(resource, expr, {}, models["r4"])
    assert compile_path(expr)(resource) == theirs


def test_typed_path_with_a_bad_type_reports_the_type() -> None:
    with pytest.raises(FHIRPathSyntaxError, match="unknown type 'Peroid'") as info:
        compile_path("performed.ofType(Peroid).start")
    assert info.value.position == 17
