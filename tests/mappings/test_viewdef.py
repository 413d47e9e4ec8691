"""ViewDefinition compile and run: the API the registry layer builds on."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from mappings.viewdef import (
    ColumnSpec,
    ViewDefinitionError,
    ViewError,
    ViewEvaluationError,
    compile_view,
)

CPT = "http://www.ama-assn.org/go/cpt"
SCT = "http://snomed.info/sct"

PROCEDURE_VIEW_YAML = f"""
resource: Procedure
constant:
  - name: cpt
    valueUri: {CPT}
select:
  - column:
      - {{name: procedure_id, path: getResourceKey(), type: string}}
      - {{name: patient_id, path: subject.getReferenceKey(Patient), type: string}}
      - {{name: cpt_code, path: "code.coding.where(system = %cpt).code.first()", type: code}}
      - {{name: performed, path: "performed.ofType(dateTime) | performed.ofType(Period).start",
          type: dateTime}}
      - {{name: codes, path: code.coding.code, collection: true}}
  - forEachOrNull: bodySite.coding.where(system = '{SCT}')
    column:
      - {{name: site_index, path: "%rowIndex", type: integer}}
      - {{name: body_site, path: code, type: code}}
where:
  - path: status = 'completed'
"""


def procedure(**changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Procedure",
        "id": "proc-1",
        "status": "completed",
        "code": {"coding": [{"system": CPT, "code": "22633"}, {"system": SCT, "code": "1"}]},
        "subject": {"reference": "Patient/pat-9"},
        "performedDateTime": "2024-03-14T08:30:00-05:00",
        "bodySite": [{"coding": [{"system": SCT, "code": "122496007"}]},
                     {"coding": [{"system": SCT, "code": "122495006"}]}],
    }
    resource.update(changes)
    return {k: v for k, v in resource.items() if v is not None}


@pytest.fixture(scope="module")
def view() -> Any:
    return compile_view(yaml.safe_load(PROCEDURE_VIEW_YAML), origin="procedure.yaml")


def test_columns_in_output_order(view: Any) -> None:
    assert view.resource == "Procedure"
    assert [c.name for c in view.columns] == [
        "procedure_id", "patient_id", "cpt_code", "performed", "codes", "site_index", "body_site"
    ]
    assert view.columns[2] == ColumnSpec(
        "cpt_code", "code.coding.where(system = %cpt).code.first()", "code", False
    )
    assert view.columns[4].collection is True


def test_rows_one_per_iterated_item(view: Any) -> None:
    rows = view.rows(procedure())
    base = {"procedure_id": "proc-1", "patient_id": "pat-9", "cpt_code": "22633",
            "performed": "2024-03-14T08:30:00-05:00", "codes": ["22633", "1"]}
    assert rows == [
        {**base, "site_index": 0, "body_site": "122496007"},
        {**base, "site_index": 1, "body_site": "122495006"},
    ]
    assert list(rows[0]) == [c.name for c in view.columns]


def test_for_each_or_null_keeps_the_resource(view: Any) -> None:
    rows = view.rows(procedure(bodySite=None, performedDateTime=None,
                               performedPeriod={"start": "2024-03-15"}))
    assert len(rows) == 1
    assert rows[0]["body_site"] is None
    assert rows[0]["site_index"] == 0
    assert rows[0]["performed"] == "2024-03-15"


def test_where_and_resource_type_filter(view: Any) -> None:
    assert view.rows(procedure(status="in-progress")) == []
    assert view.matches(procedure()) is True
    assert view.matches(procedure(status="in-progress")) is False
    assert view.rows({"resourceType": "Condition", "id": "c"}) == []
    assert view.matches({"resourceType": "Condition", "id": "c"}) is False


def test_collection_rows_do_not_share_lists_with_the_resource(view: Any) -> None:
    resource = procedure()
    rows = view.rows(resource)
    rows[0]["codes"].append("x")
    assert [c["code"] for c in resource["code"]["coding"]] == ["22633", "1"]


def test_questionnaire_response_view_with_repeat() -> None:
    view = compile_view({
        "resource": "QuestionnaireResponse",
        "select": [
            {"column": [{"name": "qr", "path": "getResourceKey()"},
                        {"name": "procedure", "path": "partOf.getReferenceKey(Procedure).first()"}]},
            {"repeat": ["item"],
             "column": [{"name": "link_id", "path": "linkId"},
                        {"name": "code", "path": "answer.value.ofType(Coding).code.first()"},
                        {"name": "score", "path": "answer.value.ofType(integer).first()"}]},
        ],
    })
    qr = {
        "resourceType": "QuestionnaireResponse", "id": "qr-1",
        "partOf": [{"reference": "Procedure/proc-1"}],
        "item": [{"linkId": "g", "item": [
            {"linkId": "q1", "answer": [{"valueCoding": {"code": "LA6"}}]},
            {"linkId": "q2", "answer": [{"valueInteger": 4}]},
        ]}],
    }
    assert view.rows(qr) == [
        {"qr": "qr-1", "procedure": "proc-1", "link_id": "g", "code": None, "score": None},
        {"qr": "qr-1", "procedure": "proc-1", "link_id": "q1", "code": "LA6", "score": None},
        {"qr": "qr-1", "procedure": "proc-1", "link_id": "q2", "code": None, "score": 4},
    ]


def test_union_all_concatenates_branches() -> None:
    view = compile_view({
        "resource": "Procedure",
        "select": [{"column": [{"name": "id", "path": "id"}],
                    "unionAll": [
                        {"forEach": "reasonReference", "column": [
                            {"name": "reason", "path": "getReferenceKey()"},
                            {"name": "kind", "path": "'reference'"}]},
                        {"forEach": "reasonCode.coding", "column": [
                            {"name": "reason", "path": "code"},
                            {"name": "kind", "path": "'code'"}]},
                    ]}],
    })
    rows = view.rows({"resourceType": "Procedure", "id": "p",
                      "reasonReference": [{"reference": "Condition/c1"}],
                      "reasonCode": [{"coding": [{"code": "M48.06"}]}]})
    assert rows == [{"id": "p", "reason": "c1", "kind": "reference"},
                    {"id": "p", "reason": "M48.06", "kind": "code"}]


@pytest.mark.parametrize(
    ("view", "message"),
    [
        ({"select": [{"column": [{"name": "id", "path": "id"}]}]},
         "v.yaml: resource: a resource type name is required"),
        ({"resource": "Patient"}, "select: at least one select is required"),
        ({"resource": "Patient", "select": [{"column": [{"name": "x", "path": "name.where("}]}]},
         "select[0].column[0] 'x': unexpected end of expression at position 11"
         " in FHIRPath 'name.where('"),
        ({"resource": "Patient", "select": [{"column": [{"name": "x", "path": "foo()"}]}]},
         "select[0].column[0] 'x': unknown or unsupported function foo()"),
        ({"resource": "Patient", "select": [{"forEach": 1}]},
         "select[0].forEach: expected a FHIRPath string, got int"),
        ({"resource": "Patient", "select": [{"forEach": "name", "forEachOrNull": "name"}]},
         "select[0]: use only one of ['forEach', 'forEachOrNull']"),
        ({"resource": "Patient", "select": [{"colum": []}]},
         "select[0]: unknown key(s) ['colum']"),
        ({"resource": "Patient", "select": [{"column": [{"name": "a b", "path": "id"}]}]},
         "select[0].column[0]: needs a name made of letters, digits and _"),
        ({"resource": "Patient", "select": [{"column": [{"name": "a", "path": "id"},
                                                        {"name": "a", "path": "id"}]}]},
         "select[0]: column name 'a' is used twice"),
        ({"resource": "Patient", "select": [{"column": [{"name": "a", "path": "id"}]},
                                            {"column": [{"name": "a", "path": "id"}]}]},
         "select: column name 'a' is used twice"),
        ({"resource": "Patient", "constant": [{"name": "c"}], "select": []},
         "constant[0] 'c': needs exactly one value[x]"),
        ({"resource": "Patient", "select": [{"column": [{"name": "a", "path": "id"}]}],
          "where": [{"path": "'text'"}]},
         "where[0]: must return a boolean, not string"),
        ({"resource": "Patient", "select": [{"unionAll": [
            {"column": [{"name": "a", "path": "id"}]},
            {"column": [{"name": "b", "path": "id"}]}]}]},
         "select[0].unionAll[1]: columns ['b'] differ from unionAll[0]'s ['a']"),
    ],
)
def test_invalid_views_are_rejected_with_their_location(view: dict[str, Any],
                                                         message: str) -> None:
    with pytest.raises(ViewDefinitionError) as info:
        compile_view(view, origin="v.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("v.yaml: ")


def test_runtime_rule_errors_name_the_column_but_not_the_data() -> None:
    view = compile_view({"resource": "Patient",
                         "select": [{"column": [{"name": "family", "path": "name.family"}]}]},
                        origin="patient.yaml")
    patient = {"resourceType": "Patient", "name": [{"family": "Smithson"}, {"family": "Jones"}]}
    with pytest.raises(ViewEvaluationError) as info:
        view.rows(patient)
    message = str(info.value)
    assert "patient.yaml: select[0].column[0] 'family': returned 2 values" in message
    assert "Smithson" not in message and "Jones" not in message
    assert isinstance(info.value, ViewError)


def test_where_clause_must_be_boolean_at_run_time() -> None:
    view = compile_view({"resource": "Patient",
                         "select": [{"column": [{"name": "id", "path": "id"}]}],
                         "where": [{"path": "name.family"}]})
    assert view.rows({"resourceType": "Patient", "id": "a"}) == []  # empty: filtered out
    with pytest.raises(ViewEvaluationError, match=r"where\[0\]: must return a single boolean"):
        view.rows({"resourceType": "Patient", "id": "b", "name": [{"family": "X"}]})


def test_fhirpath_evaluation_errors_become_view_errors() -> None:
    view = compile_view({"resource": "Patient",
                         "select": [{"column": [{"name": "n", "path": "name.given.upper()"}]}]})
    with pytest.raises(ViewEvaluationError, match=r"select\[0\].column\[0\] 'n': upper\(\)"):
        view.rows({"resourceType": "Patient", "name": [{"given": ["a", "b"]}]})


def test_constants_are_substituted_once() -> None:
    view = compile_view({
        "resource": "Observation",
        "constant": [{"name": "loinc", "valueUri": "http://loinc.org"},
                     {"name": "limit", "valueDecimal": 30.5}],
        "select": [{"column": [
            {"name": "code", "path": "code.coding.where(system = %loinc).code.first()"},
            {"name": "high", "path": "value.ofType(Quantity).value > %limit"}]}],
    })
    obs = {"resourceType": "Observation",
           "code": {"coding": [{"system": "http://loinc.org", "code": "39156-5"}]},
           "valueQuantity": {"value": 31.2}}
    assert view.rows(obs) == [{"code": "39156-5", "high": True}]


def test_yaml_dates_in_constants_compare_as_iso_text() -> None:
    view = compile_view(yaml.safe_load("""
resource: Patient
constant:
  - {name: born, valueDate: 1978-03-12}
select:
  - column: [{name: match, path: "birthDate = %born"}]
"""))
    assert view.rows({"resourceType": "Patient", "birthDate": "1978-03-12"}) == [{"match": True}]
    with pytest.raises(ViewDefinitionError, match="valueTime must be an ISO string"):
        compile_view(yaml.safe_load("""
resource: Observation
constant: [{name: t, valueTime: 18:12:00}]
select: [{column: [{name: x, path: "value.ofType(time) = %t"}]}]
"""))


def test_flat_view_gives_one_row_of_single_values_and_copied_lists() -> None:
    # No forEach/unionAll: the one-row fast path of CompiledView.rows.
    flat = compile_view({
        "resource": "Procedure",
        "select": [{"column": [
            {"name": "id", "path": "id"},
            {"name": "status", "path": "status"},
            {"name": "outcome", "path": "outcome.text"},
            {"name": "codings", "path": "code.coding", "collection": True},
            {"name": "sites", "path": "bodySite.coding.code", "collection": True},
            {"name": "closed", "path": "status = 'completed' or status = 'stopped'"},
        ]}],
    }, origin="flat.yaml")
    resource = procedure()
    rows = flat.rows(resource)
    assert rows == [{
        "id": "proc-1", "status": "completed", "outcome": None,
        "codings": resource["code"]["coding"], "sites": ["122496007", "122495006"],
        "closed": True,
    }]
    rows[0]["codings"].append({"code": "x"})
    assert len(resource["code"]["coding"]) == 2
    assert flat.rows(procedure(status="on-hold"))[0]["closed"] is False
    with pytest.raises(ViewEvaluationError, match=r"flat.yaml: select\[0\].column\[1\] 'status'"):
        flat.rows(procedure(status=["a", "b"]))
