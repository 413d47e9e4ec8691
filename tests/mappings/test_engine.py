"""The registry mapping engine on the bundled mapping files."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from adapters.base import Checkpoint, Item, Record, SourceContext
from adapters.files import FilesSource
from mappings.convert import CONVERTERS
from mappings.engine import _HOOKS, BUNDLED, MappingFileError, load_mappings
from registry_adapter.app import App, target_columns
from registry_adapter.pipeline import Pipeline
from registry_store.tables import MAPPING_TARGETS
from tests.conftest import SAMPLE_FEED

CPT = "http://www.ama-assn.org/go/cpt"


def _proc(codes: list[str], **extra: Any) -> dict[str, Any]:
    res = {
        "resourceType": "Procedure",
        "id": "p1",
        "status": "completed",
        "subject": {"reference": "Patient/pat-1"},
        "encounter": {"reference": "Encounter/e1"},
        "code": {"coding": [{"system": CPT, "code": c} for c in codes]},
        "performedDateTime": "2025-03-14T08:30:00-05:00",
    }
    res.update(extra)
    return res


def test_fusion_outranks_decompression_and_flags_are_set(sqlite_app: App) -> None:
    m = sqlite_app.mappings["Procedure"]
    r = m.map(_proc(["63047", "22633", "22842"]), sqlite_app.site)
    assert r.disposition == "mapped", r.issues
    row = r.row
    assert (row["category"], row["module"], row["role"]) == ("plif_tlif", "lumbar", "index")
    assert row["instrumented"] is True and row["revision"] is False
    assert row["patient_id"] == "pat-1" and row["encounter_id"] == "e1"
    assert row["codes"] == ["cpt|63047", "cpt|22633", "cpt|22842"]
    assert row["surgery_date"] == date(2025, 3, 14)


def test_surgery_date_is_the_site_local_day(sqlite_app: App) -> None:
    m = sqlite_app.mappings["Procedure"]
    # 03:30 UTC on the 15th is 22:30 on the 14th in Chicago (the site).
    late = m.map(_proc(["22551"], performedDateTime="2025-03-15T03:30:00Z"), sqlite_app.site)
    assert late.row["surgery_date"] == date(2025, 3, 14)
    # A dateTime without offset is site-local; a Period's start counts too.
    naive = m.map(_proc(["22551"], performedDateTime="2025-03-15T00:30:00"), sqlite_app.site)
    assert naive.row["surgery_date"] == date(2025, 3, 15)
    res = _proc(["22551"])
    del res["performedDateTime"]
    res["performedPeriod"] = {"start": "2025-04-01T07:00:00-05:00", "end": "2025-04-01T11:00:00-05:00"}
    assert m.map(res, sqlite_app.site).row["surgery_date"] == date(2025, 4, 1)


def test_not_spine_is_out_of_scope_and_unlisted_spine_is_an_error(sqlite_app: App) -> None:
    m = sqlite_app.mappings["Procedure"]
    assert m.map(_proc(["27447"]), sqlite_app.site).disposition == "out_of_scope"
    r = m.map(_proc(["22899"]), sqlite_app.site)
    assert r.disposition == "failed"
    (issue,) = r.issues
    assert (issue.code, issue.value, issue.field) == ("codemap.unmapped_code", "cpt|22899", "codings")
    assert "22899 is not in code map spine-procedures" in issue.message


def test_unknown_extra_code_beside_an_index_code_is_reported_but_mapped(sqlite_app: App) -> None:
    r = sqlite_app.mappings["Procedure"].map(_proc(["22633", "22899"]), sqlite_app.site)
    # The surgery is clearly a PLIF/TLIF case; the unknown code still goes to review.
    assert r.disposition == "mapped" and r.row["category"] == "plif_tlif"
    assert [(i.code, i.value) for i in r.issues] == [("codemap.unmapped_code", "cpt|22899")]


def test_required_fields_and_allowed_values(sqlite_app: App) -> None:
    m = sqlite_app.mappings["Procedure"]
    res = _proc(["63047"])
    del res["performedDateTime"]
    r = m.map(res, sqlite_app.site)
    assert r.disposition == "failed" and [i.code for i in r.issues] == ["mapping.required_missing"]
    assert (r.issues[0].field, r.issues[0].rule) == ("surgery_date", "required")
    bad = m.map(_proc(["63047"], status="done"), sqlite_app.site)
    assert [(i.code, i.value, i.rule) for i in bad.issues] == [
        ("mapping.value_not_allowed", "done", "allowed")
    ]
    partial = m.map(_proc(["63047"], performedDateTime="2025-03"), sqlite_app.site)
    assert [(i.code, i.rule) for i in partial.issues] == [("value.partial_date", "convert:local_date")]
    unmapped = m.map(_proc(["22899"]), sqlite_app.site)
    assert [(i.code, i.rule) for i in unmapped.issues] == [
        ("codemap.unmapped_code", "translate:spine-procedures")
    ]
    warned = m.map(_proc(["22633"], status="on-hold"), sqlite_app.site)
    assert [(i.rule, i.severity) for i in warned.issues] == [("procedure.not_completed", "warning")]


def test_sample_feed_error_rows_name_the_rule_that_failed(sqlite_app: App) -> None:
    Pipeline(sqlite_app).ingest(FilesSource("sample", [SAMPLE_FEED]), SourceContext())
    with sqlite_app.engine.connect() as conn:
        rows = conn.execute(text("SELECT code, rule FROM mapping_errors")).all()
    # Every failure the engine and case assembly report in the sample feed, by its rule.
    assert {(code, rule) for code, rule in rows if not code.startswith("intake.")} == {
        ("codemap.unmapped_code", "translate:spine-procedures"),  # CPT 22899
        ("codemap.unmapped_code", "translate:spine-diagnoses"),  # ICD-10-CM M48.9
        ("mapping.required_missing", "required"),
        ("prom.unknown_instrument", "derive:prom_score"),
        ("prom.not_scorable", "prom:odi"),  # an ODI with three sections left out
        ("prom.too_many_missing", "prom:odi"),
        ("case.no_index_procedure", "index_procedure"),
    }
    assert all(rule for _code, rule in rows), rows  # intake errors too (rule "intake")


def test_entered_in_error_is_excluded_and_warnings_do_not_fail(sqlite_app: App) -> None:
    m = sqlite_app.mappings["Procedure"]
    assert m.map(_proc(["22633"], status="entered-in-error"), sqlite_app.site).disposition == "excluded"
    r = m.map(_proc(["22633"], status="on-hold"), sqlite_app.site)
    assert r.disposition == "mapped" and [i.code for i in r.issues] == ["procedure.not_completed"]


def test_condition_codes_undotted_and_out_of_scope(sqlite_app: App) -> None:
    m = sqlite_app.mappings["Condition"]
    res: dict[str, Any] = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/pat-1"},
        "code": {
            "coding": [
                {"system": "http://snomed.info/sct", "code": "18347007"},
                {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "M48062"},
            ]
        },
    }
    r = m.map(res, sqlite_app.site)
    assert r.disposition == "mapped"
    assert (r.row["code"], r.row["category"], r.row["region"]) == ("M48.062", "stenosis", "lumbar")
    res["code"]["coding"][1]["code"] = "E11.9"
    assert m.map(res, sqlite_app.site).disposition == "out_of_scope"


def test_patient_pseudonym_is_keyed_and_stable(sqlite_app: App) -> None:
    m = sqlite_app.mappings["Patient"]
    res = {
        "resourceType": "Patient",
        "id": "pat-1",
        "gender": "female",
        "birthDate": "1960-02-29",
        "identifier": [{"type": {"coding": [{"code": "MR"}]}, "value": "MRN-1"}],
        "deceasedDateTime": "2025-06-01",
    }
    row = m.map(res, sqlite_app.site).row
    assert row["mrn"] == "MRN-1" and len(row["pseudonym"]) == 32 and "MRN" not in row["pseudonym"]
    assert row["deceased"] is True and row["deceased_date"] == date(2025, 6, 1)
    assert m.map(res, sqlite_app.site).row["pseudonym"] == row["pseudonym"]


def _copy(tmp_path: Path) -> Path:
    dest = tmp_path / "views"
    shutil.copytree(BUNDLED, dest)
    return dest


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "    surgeon: {column: surgeon_ref, convert: reference_id}",
            "    surgeon: {column: surgeon, convert: reference_id}",
            "registry.fields.surgeon.column: no view column named 'surgeon'",
        ),
        (
            "      codemap: spine-procedures",
            "      codemap: spine-procs",
            "registry.translate[0].codemap: unknown code map 'spine-procs'",
        ),
        (
            "    patient_id: {column: patient_ref, convert: reference_id, required: true}",
            "    patient_id: {column: patient_ref, convert: to_uuid, required: true}",
            "registry.fields.patient_id.convert: unknown conversion 'to_uuid'",
        ),
        (
            "        - {name: status, path: status, type: code}",
            '        - {name: status, path: "status.where(", type: code}',
            "view.select[0].column[1] 'status': unexpected end of expression",
        ),
        ("  target: procedures", "  target: operations", "registry.target: unknown table 'operations'"),
        (
            "    surgeon: {column: surgeon_ref, convert: reference_id}",
            "    surgeon_name: {column: surgeon_ref}",
            "registry.fields.surgeon_name: table procedures has no column surgeon_name",
        ),
        (
            "      when: \"status = 'on-hold' or status = 'stopped'\"",
            "      when: \"status = = 'on-hold'\"",
            "registry.rules[0].when: unexpected '='",
        ),
        (
            "      pick_max: rank",
            "      pick_max: rank\n      speed: fast",
            "registry.translate.0.speed: Extra",
        ),
    ],
)
def test_mapping_file_errors_name_file_line_and_key(
    sqlite_app: App, tmp_path: Path, old: str, new: str, message: str
) -> None:
    folder = _copy(tmp_path)
    path = folder / "procedure.yaml"
    text = path.read_text()
    assert old in text
    changed = text.replace(old, new)
    path.write_text(changed)
    # The line staff must edit: the (last) line the broken text is on.
    line = changed[: changed.index(new) + len(new)].count("\n") + 1
    with pytest.raises(MappingFileError) as err:
        load_mappings(sqlite_app.codemaps, folder, target_columns())
    assert err.value.problems == [str(err.value)]
    assert str(err.value).startswith(f"{path}:{line}: {message}")


def test_mappings_check_reports_every_problem_of_a_file_with_its_line(
    sqlite_app: App, tmp_path: Path
) -> None:
    folder = _copy(tmp_path)
    path = folder / "condition.yaml"
    lines = path.read_text().splitlines()
    broken = {
        "        - {name: recorded, path: recordedDate, type: dateTime}": (
            '        - {name: recorded, path: "recordedDate.", type: dateTime}',
            "view.select[0].column[6] 'recorded': ",
        ),
        "      codemap: spine-diagnoses": (
            "      codemap: diagnoses",
            "registry.translate[0].codemap: unknown code map",
        ),
        "    - {when: \"verification_status = 'entered-in-error' or verification_status = 'refuted'\", "
        "reason: not a diagnosis}": (
            '    - {when: "verification_status = ", reason: not a diagnosis}',
            "registry.exclude[0].when: ",
        ),
        "    recorded_date: {column: recorded, convert: local_date}": (
            "    recorded_date: {column: recorded, convert: day}",
            "registry.fields.recorded_date.convert: unknown conversion 'day'",
        ),
    }
    expected = []
    for old, (new, message) in broken.items():
        n = lines.index(old)
        lines[n] = new
        expected.append(f"{path}:{n + 1}: {message}")
    path.write_text("\n".join(lines) + "\n")
    problems: list[str] = []
    mappings = load_mappings(sqlite_app.codemaps, folder, target_columns(), problems=problems)
    assert "Condition" not in mappings and "Procedure" in mappings  # the other files still load
    assert len(problems) == len(expected), problems
    for want in expected:
        assert any(p.startswith(want) for p in problems), (want, problems)


# -- map() never raises; what cannot be mapped is an Issue that never quotes patient data ------


def _qr(authored: Any) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "id": "qr-1",
        "status": "completed",
        "subject": {"reference": "Patient/pat-1"},
        "authored": authored,
    }


@pytest.mark.parametrize(
    ("authored", "code"),
    [
        ("2024-02-30", "value.invalid_date"),  # crashed the whole batch with ValueError
        (20240315, "value.invalid_datetime"),  # a JSON number, not a FHIR dateTime
        ("20240315", "value.invalid_datetime"),  # HL7 v2 / ISO basic form, not FHIR
        ("2024-03-15 08:30:00", "value.invalid_datetime"),
        ("2024-03-15T24:00:00Z", "value.invalid_datetime"),
    ],
)
def test_invalid_dates_become_issues_not_crashes(sqlite_app: App, authored: Any, code: str) -> None:
    r = sqlite_app.mappings["QuestionnaireResponse"].map(_qr(authored), sqlite_app.site)
    assert r.disposition == "failed"
    by_field = {i.field: i.code for i in r.issues if i.field in ("authored", "completion_date")}
    assert by_field == {"authored": code, "completion_date": code}
    assert r.row["completion_date"] is None


def _patient(**extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Patient",
        "id": "pat-1",
        "identifier": [{"type": {"coding": [{"code": "MR"}]}, "value": "MRN-1"}],
    }
    res.update(extra)
    return res


def _mapping_dir_with(tmp_path: Path, name: str, old: str, new: str) -> Path:
    folder = _copy(tmp_path)
    path = folder / name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return folder


def test_rules_and_excludes_that_fail_to_evaluate_are_internal_errors(
    sqlite_app: App, tmp_path: Path
) -> None:
    # single() on two values raises at evaluation time: a real fault of a site-written rule.
    rule = (
        '  rules:\n    - code: patient.contact\n      when: "(email | phone).single().exists()"\n'
        "      field: email\n      message: x\n"
    )
    folder = _mapping_dir_with(tmp_path, "patient.yaml", "  rules:\n", rule)
    m = load_mappings(sqlite_app.codemaps, folder, target_columns())["Patient"]
    res = _patient(
        telecom=[{"system": "email", "value": "jo@example.org"}, {"system": "phone", "value": "555"}]
    )
    r = m.map(res, sqlite_app.site)
    assert r.disposition == "failed"
    (issue,) = [i for i in r.issues if i.code == "mapping.internal_error"]
    assert issue.field == "email" and "FHIRPathEvaluationError" in issue.message
    assert "jo@" not in issue.message and issue.value is None

    exclude = '  exclude:\n    - {when: "(email | phone).single().exists()", reason: test}\n  rules:\n'
    folder = _mapping_dir_with(tmp_path / "x", "patient.yaml", "  rules:\n", exclude)
    r = load_mappings(sqlite_app.codemaps, folder, target_columns())["Patient"].map(res, sqlite_app.site)
    assert r.disposition == "failed"
    assert [(i.code, i.field) for i in r.issues if i.severity != "warning"] == [
        ("mapping.internal_error", "exclude[0]")
    ]


def test_converters_and_hooks_that_raise_are_internal_errors(
    sqlite_app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Faults we cannot cause with the bundled code: a site converter / hook with a bug that
    # puts the value in its exception text.
    def leaky(value: Any, _ctx: Any) -> Any:
        raise KeyError(f"bad {value}")

    def leaky_hook(resource: Any, row: dict[str, Any], ctx: Any) -> list[Any]:
        raise RuntimeError(f"cannot handle {row['email']}")

    monkeypatch.setitem(CONVERTERS, "leaky", leaky)
    monkeypatch.setitem(_HOOKS, "leaky_hook", leaky_hook)
    folder = _mapping_dir_with(
        tmp_path, "patient.yaml", "    email: email\n", "    email: {column: email, convert: leaky}\n"
    )
    path = folder / "patient.yaml"
    path.write_text(
        path.read_text().replace("derive: [patient_deceased]", "derive: [patient_deceased, leaky_hook]")
    )
    m = load_mappings(sqlite_app.codemaps, folder, target_columns())["Patient"]
    r = m.map(_patient(telecom=[{"system": "email", "value": "jo@example.org"}]), sqlite_app.site)
    assert r.disposition == "failed"
    internal = [(i.field, i.message) for i in r.issues if i.code == "mapping.internal_error"]
    assert [f for f, _ in internal] == ["email", "leaky_hook"]
    assert "KeyError" in internal[0][1] and "RuntimeError" in internal[1][1]
    assert all("jo@" not in msg for _, msg in internal)
    assert r.row["email"] is None


def _column_targets() -> dict[str, list[Any]]:
    # What registry_adapter.app.target_columns() is to pass: Columns, which carry lengths.
    return {name: list(table.columns) for name, table in MAPPING_TARGETS.items()}


def test_values_too_long_for_their_column_are_issues(sqlite_app: App) -> None:
    m = load_mappings(sqlite_app.codemaps, None, _column_targets())["Patient"]
    long_phone = "5" * 65  # patients.phone is VARCHAR(64)
    r = m.map(_patient(telecom=[{"system": "phone", "value": long_phone}]), sqlite_app.site)
    assert r.disposition == "mapped" and r.row["phone"] is None
    (issue,) = r.issues
    assert (issue.code, issue.field, issue.value, issue.rule, issue.severity) == (
        "mapping.value_too_long",
        "phone",
        None,
        "column_length",
        "warning",
    )
    assert long_phone not in issue.message and "64" in issue.message
    # The id is what the row is keyed by: too long fails the record.
    r = m.map(_patient(id="p" * 257), sqlite_app.site)
    assert r.disposition == "failed" and [(i.code, i.field) for i in r.issues] == [
        ("mapping.value_too_long", "id")
    ]
    # Plain column names (no lengths known) keep working and check nothing.
    names = {table: [c.name for c in cols] for table, cols in target_columns().items()}
    plain = load_mappings(sqlite_app.codemaps, None, names)["Patient"]
    assert (
        plain.map(_patient(telecom=[{"system": "phone", "value": long_phone}]), sqlite_app.site).row["phone"]
        == long_phone
    )


@pytest.mark.parametrize(("flag", "dead"), [(True, True), (False, False), ("false", False), ("true", True)])
def test_deceased_boolean_is_converted_not_truth_tested(sqlite_app: App, flag: Any, dead: bool) -> None:
    r = sqlite_app.mappings["Patient"].map(_patient(deceasedBoolean=flag), sqlite_app.site)
    assert r.disposition == "mapped" and r.row["deceased"] is dead


def test_a_deceased_value_that_is_not_a_boolean_is_an_issue_and_not_death(sqlite_app: App) -> None:
    r = sqlite_app.mappings["Patient"].map(_patient(deceasedBoolean="John Smith"), sqlite_app.site)
    assert r.row["deceased"] is False
    (issue,) = r.issues
    assert (issue.code, issue.field, issue.value) == ("value.invalid_boolean", "deceased", None)
    assert "John" not in issue.message


def test_a_reference_that_is_not_a_string_is_an_issue(sqlite_app: App) -> None:
    res = _proc(["22633"], subject={"reference": {"display": "John Smith"}})
    r = sqlite_app.mappings["Procedure"].map(res, sqlite_app.site)
    assert r.disposition == "failed" and r.row["patient_id"] is None
    assert [(i.code, i.field) for i in r.issues] == [("value.invalid_reference", "patient_id")]
    assert "John" not in r.issues[0].message


def test_values_that_are_not_codes_are_never_quoted(sqlite_app: App) -> None:
    m = sqlite_app.mappings["Patient"]
    issues = [
        next(
            i
            for i in m.map(_patient(gender=g), sqlite_app.site).issues
            if i.code == "mapping.value_not_allowed"
        )
        for g in ("John Smith", "Jane Doe", {"text": "x"})
    ]
    # One cause for all of them, and no name in the message.
    assert {(i.field, i.value, i.message) for i in issues} == {
        ("sex", None, "Patient: sex (a value that is not a code) is not one of male, female, other, unknown")
    }
    coded = next(
        i
        for i in m.map(_patient(gender="F"), sqlite_app.site).issues
        if i.code == "mapping.value_not_allowed"
    )
    assert coded.value == "F" and "'F'" in coded.message


def test_an_over_long_value_is_an_error_row_not_a_failed_write(app: App) -> None:
    # PostgreSQL refuses a 65-character phone in VARCHAR(64) and would fail the whole batch.
    app.__dict__["mappings"] = load_mappings(app.codemaps, None, _column_targets())
    long_phone = "5" * 65
    patient = _patient(telecom=[{"system": "phone", "value": long_phone}])
    Pipeline(app).ingest(_Events([Record(patient, "test")]))
    with app.engine.connect() as conn:
        phone = conn.execute(text("SELECT phone FROM patients WHERE id = 'pat-1'")).scalar_one()
        errors = conn.execute(text("SELECT code, field, value, message FROM mapping_errors")).all()
    assert phone is None
    assert [(e.code, e.field, e.value) for e in errors] == [("mapping.value_too_long", "phone", None)]
    assert long_phone not in errors[0].message


class _Events:
    name = "sample"

    def __init__(self, items: list[Item]):
        self.items = items

    def read(self, ctx: SourceContext) -> Iterator[Item]:
        yield from self.items
        yield Checkpoint({})
