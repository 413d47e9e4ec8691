"""The registry mapping engine on the bundled mapping files."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from mappings.engine import BUNDLED, MappingFileError, load_mappings
from registry_adapter.app import App, target_columns

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
    assert r.issues[0].field == "surgery_date"
    bad = m.map(_proc(["63047"], status="done"), sqlite_app.site)
    assert [(i.code, i.value) for i in bad.issues] == [("mapping.value_not_allowed", "done")]
    partial = m.map(_proc(["63047"], performedDateTime="2025-03"), sqlite_app.site)
    assert [i.code for i in partial.issues] == ["value.partial_date"]


def test_entered_in_error_is_excluded_and_warnings_do_not_fail(sqlite_app: App) -> None:
    m = sqlite_app.mappings["Procedure"]
    assert m.map(_proc(["22633"], status="entered-in-error"), sqlite_app.site).disposition == "excluded"
    r = m.map(_proc(["22633"], status="on-hold"), sqlite_app.site)
    assert r.disposition == "mapped" and [i.code for i in r.issues] == ["procedure.not_completed"]


def test_condition_codes_undotted_and_out_of_scope(sqlite_app: App) -> None:
    m = sqlite_app.mappings["Condition"]
    res = {
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
            "registry.fields.surgeon: no view column named 'surgeon'",
        ),
        ("      codemap: spine-procedures", "      codemap: spine-procs", "unknown code map 'spine-procs'"),
        (
            "    patient_id: {column: patient_ref, convert: reference_id, required: true}",
            "    patient_id: {column: patient_ref, convert: to_uuid, required: true}",
            "unknown conversion 'to_uuid'",
        ),
        (
            "        - {name: status, path: status, type: code}",
            '        - {name: status, path: "status.where(", type: code}',
            "view:",
        ),
        ("  target: procedures", "  target: operations", "unknown table 'operations'"),
        (
            "    surgeon: {column: surgeon_ref, convert: reference_id}",
            "    surgeon_name: {column: surgeon_ref}",
            "table procedures has no column surgeon_name",
        ),
        ("      pick_max: rank", "      pick_max: rank\n      speed: fast", "procedure.yaml:"),
    ],
)
def test_mapping_file_errors_name_file_and_key(
    sqlite_app: App, tmp_path: Path, old: str, new: str, message: str
) -> None:
    folder = _copy(tmp_path)
    path = folder / "procedure.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    with pytest.raises(MappingFileError) as err:
        load_mappings(sqlite_app.codemaps, folder, target_columns())
    assert "procedure.yaml" in str(err.value) and message in str(err.value)
