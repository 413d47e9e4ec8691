"""v2 → FHIR conversion: every sample converts or fails clearly; semantics of ids, updates,
cancels, dates, codes and identifiers."""

from __future__ import annotations

import shutil
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from adapters.hl7v2.config import load_config
from adapters.hl7v2.convert import ConversionResult, convert_message
from tests.hl7v2.conftest import MESSAGES

CHICAGO = ZoneInfo("America/Chicago")
SUPPORTED = set(load_config().messages)


def _conv(text: str, tz: ZoneInfo = CHICAGO) -> ConversionResult:
    return convert_message(text.replace("\n", "\r").encode(), source="test", tz=tz)


def _one(result: ConversionResult, rtype: str) -> dict:
    found = [r for r in result.resources if r["resourceType"] == rtype]
    assert len(found) == 1, (rtype, [r["resourceType"] for r in result.resources])
    return found[0]


def _all(result: ConversionResult, rtype: str) -> list[dict]:
    return [r for r in result.resources if r["resourceType"] == rtype]


def _codes(result: ConversionResult) -> set[str]:
    return {e.code for e in result.errors}


def seg(name: str, fields: dict[int, str]) -> str:
    """A segment with the given fields set (position → value), others empty."""
    values = [""] * max(fields)
    for n, v in fields.items():
        values[n - 1] = v
    return "|".join([name, *values])


MSH = "MSH|^~\\&|EPIC|GOODHEALTH|REG|SPINE|20250301101500||{type}|{cid}|P|2.5.1"
PID = seg("PID", {1: "1", 3: "MRN123^^^GOODHEALTH^MR~999-00-1234^^^SSA^SS", 5: "DOE^JANE^Q",
                  7: "19700101", 8: "F"})
PV1 = seg("PV1", {1: "1", 2: "I", 7: "1234^BONE^ROBERT^^^DR", 19: "V555^^^GOODHEALTH^VN",
                  44: "20250301080000", 45: "{discharge}"})
PR1 = seg("PR1", {1: "1", 3: "22633^Lumbar fusion \\T\\ decompression^C4", 5: "20250301093000",
                  11: "5678^CUTTER^SAM^^^DR^^^GOODHEALTH"})
DG1 = seg("DG1", {1: "1", 3: "M48.062^Spinal stenosis, lumbar^I10", 5: "20250301", 6: "A"})


def _adt(trigger: str, cid: str = "C1", discharge: str = "", extra: str = "") -> str:
    segs = [MSH.format(type=f"ADT^{trigger}^ADT_A01", cid=cid), f"EVN|{trigger}|20250301101500",
            PID, PV1.format(discharge=discharge), DG1, PR1]
    if extra:
        segs.append(extra)
    return "\n".join(segs)


# --- every sample ------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(MESSAGES.glob("*.hl7")), ids=lambda p: p.name)
def test_every_sample_converts_or_fails_clearly(path: Path) -> None:
    result = convert_message(path.read_bytes(), source=path.name, tz=CHICAGO)
    assert result.resources or result.errors
    for issue in result.errors:
        assert issue.code.startswith("hl7.") and issue.message
        assert issue.severity in ("error", "warning")
    header = result.header
    assert header is not None
    if header.message_type in SUPPORTED:
        assert _all(result, "Patient"), [e.code for e in result.errors]
        for r in result.resources:
            assert r["id"] and len(r["id"]) == 24
            for ref_key in ("subject", "encounter"):
                if ref_key in r:
                    ref = r[ref_key]["reference"]
                    assert ref.split("/")[1] in {x["id"] for x in result.resources}
    else:
        assert [e.code for e in result.errors] == ["hl7.unsupported_message"]
        assert result.errors[0].field == "MSH-9"
        assert not result.resources


# --- Patient, Encounter, Procedure, Condition semantics ----------------------------------


def test_adt_a01_maps_registry_fields() -> None:
    r = _conv(_adt("A01"))
    assert r.ok, r.errors
    patient = _one(r, "Patient")
    assert patient["identifier"][0] == {
        "value": "MRN123",
        "system": "urn:hl7v2:authority:GOODHEALTH",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                             "code": "MR"}]},
    }
    assert patient["name"] == [{"family": "DOE", "given": ["JANE", "Q"]}]
    assert patient["birthDate"] == "1970-01-01" and patient["gender"] == "female"
    enc = _one(r, "Encounter")
    assert enc["status"] == "in-progress"
    assert enc["period"] == {"start": "2025-03-01T08:00:00-06:00"}
    assert enc["identifier"][0]["value"] == "V555"
    assert enc["class"]["code"] == "IMP"
    assert enc["subject"] == {"reference": f"Patient/{patient['id']}"}
    proc = _one(r, "Procedure")
    assert proc["code"]["coding"] == [{"system": "http://www.ama-assn.org/go/cpt",
                                       "code": "22633",
                                       "display": "Lumbar fusion & decompression"}]
    assert proc["performedDateTime"] == "2025-03-01T09:30:00-06:00"
    assert proc["encounter"] == {"reference": f"Encounter/{enc['id']}"}
    surgeon = proc["performer"][0]
    assert surgeon["function"]["coding"][0]["code"] == "304292004"
    practitioner = next(x for x in r.resources if x["resourceType"] == "Practitioner"
                        and surgeon["actor"]["reference"] == f"Practitioner/{x['id']}")
    assert practitioner["identifier"][0]["value"] == "5678"
    cond = _one(r, "Condition")
    assert cond["code"]["coding"][0] == {"system": "http://hl7.org/fhir/sid/icd-10-cm",
                                         "code": "M48.062",
                                         "display": "Spinal stenosis, lumbar"}
    assert cond["onsetDateTime"] == "2025-03-01"
    assert {"system": "http://terminology.hl7.org/CodeSystem/v2-0052", "code": "A"} in [
        c for cat in cond["category"] for c in cat["coding"]]


def test_resent_and_updated_messages_keep_ids() -> None:
    a01 = _conv(_adt("A01", cid="C1"))
    a08 = _conv(_adt("A08", cid="C2"))
    a03 = _conv(_adt("A03", cid="C3", discharge="20250303120000"))
    ids = [{(x["resourceType"], x["id"]) for x in r.resources} for r in (a01, a08, a03)]
    assert ids[0] == ids[1] == ids[2]
    enc = _one(a03, "Encounter")
    assert enc["status"] == "finished"
    assert enc["period"]["end"] == "2025-03-03T12:00:00-06:00"


def test_a11_deletes_encounter_and_a13_reverses_discharge() -> None:
    enc_id = _one(_conv(_adt("A01")), "Encounter")["id"]
    a11 = _conv(_adt("A11", cid="C9"))
    assert ("Encounter", enc_id) in a11.deleted
    assert not _all(a11, "Encounter")
    assert _all(a11, "Patient")
    a13 = _conv(_adt("A13", cid="C10", discharge="20250303120000"))
    enc = _one(a13, "Encounter")
    assert enc["id"] == enc_id and enc["status"] == "in-progress"
    assert "end" not in enc["period"]


def test_pr1_action_code_d_deletes_the_procedure() -> None:
    proc_id = _one(_conv(_adt("A08")), "Procedure")["id"]
    deleted_pr1 = PR1 + "|" * 9 + "D"  # PR1-20 action code
    text = _adt("A08", cid="C11").replace(PR1, deleted_pr1)
    r = _conv(text)
    assert ("Procedure", proc_id) in r.deleted
    assert not _all(r, "Procedure")


def test_times_without_offset_use_site_time_zone_and_dates_stay_dates() -> None:
    summer = _adt("A01").replace("20250301093000", "20250701093000")
    proc = _one(_conv(summer), "Procedure")
    assert proc["performedDateTime"] == "2025-07-01T09:30:00-05:00"  # CDT
    utc = _one(_conv(summer, ZoneInfo("UTC")), "Procedure")
    assert utc["performedDateTime"] == "2025-07-01T09:30:00+00:00"
    with_offset = _adt("A01").replace("20250301093000", "202503010930+0100")
    assert _one(_conv(with_offset), "Procedure")["performedDateTime"] == "2025-03-01T09:30:00+01:00"
    date_only = _adt("A01").replace("20250301093000", "20250301")
    assert _one(_conv(date_only), "Procedure")["performedDateTime"] == "2025-03-01"


def test_pr1_minutes_give_a_period() -> None:
    text = _adt("A01").replace("20250301093000||", "20250301093000||90")
    proc = _one(_conv(text), "Procedure")
    assert proc["performedPeriod"] == {"start": "2025-03-01T09:30:00-06:00",
                                       "end": "2025-03-01T11:00:00-06:00"}


@pytest.mark.parametrize(
    ("cs", "system"),
    [
        ("C4", "http://www.ama-assn.org/go/cpt"),
        ("CPT", "http://www.ama-assn.org/go/cpt"),
        ("I10", "http://hl7.org/fhir/sid/icd-10-cm"),
        ("I10C", "http://hl7.org/fhir/sid/icd-10-cm"),
        ("I10P", "http://www.cms.gov/Medicare/Coding/ICD10"),
        ("SCT", "http://snomed.info/sct"),
        ("SNM", "http://snomed.info/sct"),
    ],
)
def test_coding_system_table_0396(cs: str, system: str) -> None:
    text = _adt("A01").replace("^C4|", f"^{cs}|")
    assert _one(_conv(text), "Procedure")["code"]["coding"][0]["system"] == system


def test_unknown_coding_system_is_kept_and_warned() -> None:
    r = _conv(_adt("A01").replace("^C4|", "^LOCALPX|"))
    coding = _one(r, "Procedure")["code"]["coding"][0]
    assert coding["system"] == "urn:hl7v2:codesystem:LOCALPX"
    warning = next(e for e in r.errors if e.code == "hl7.unknown_code_system")
    assert warning.severity == "warning" and warning.field == "PR1-3"


def test_identifier_systems_from_authority(tmp_path: Path) -> None:
    oid = _adt("A01").replace("MRN123^^^GOODHEALTH^MR", "MRN123^^^&1.2.840.1&ISO^MR")
    assert _one(_conv(oid), "Patient")["identifier"][0]["system"] == "urn:oid:1.2.840.1"
    # A site maps its authority to its real system in code_systems.yaml.
    cfg_dir = tmp_path / "hl7v2"
    shutil.copytree(load_config().directory, cfg_dir)
    codes = yaml.safe_load((cfg_dir / "code_systems.yaml").read_text())
    codes["identifier_systems"] = {"GOODHEALTH": "https://goodhealth.example.org/mrn"}
    (cfg_dir / "code_systems.yaml").write_text(yaml.safe_dump(codes))
    r = convert_message(_adt("A01").replace("\n", "\r"), source="t", tz=CHICAGO,
                        cfg=load_config(cfg_dir))
    assert _one(r, "Patient")["identifier"][0]["system"] == "https://goodhealth.example.org/mrn"


def test_death_fields() -> None:
    text = _adt("A03", discharge="20250303120000").replace(
        PID, PID + "|" * 21 + "20250303115500|Y")
    patient = _one(_conv(text), "Patient")
    assert patient["deceasedDateTime"] == "2025-03-03T11:55:00-06:00"
    assert "deceasedBoolean" not in patient
    only_flag = _adt("A03").replace(PID, PID + "|" * 22 + "Y")
    assert _one(_conv(only_flag), "Patient")["deceasedBoolean"] is True


def test_bad_values_name_the_field_without_the_value() -> None:
    text = _adt("A01").replace("20250301093000", "20250231093000").replace("19700101", "19701301")
    r = _conv(text)
    issues = {(e.code, e.field) for e in r.errors}
    assert ("hl7.bad_date", "PR1-5") in issues and ("hl7.bad_date", "PID-7") in issues
    for e in r.errors:
        assert "20250231" not in e.message and "19701301" not in e.message
    # The rest of the Procedure still converts (its code reaches the registry).
    proc = _one(r, "Procedure")
    assert proc["code"]["coding"][0]["code"] == "22633" and "performedDateTime" not in proc


def test_oru_prom_scores_and_answers_become_observations() -> None:
    text = "\n".join([
        MSH.format(type="ORU^R01^ORU_R01", cid="P1"), PID,
        "OBR|1|ORD1|FIL1|11111-1^Local PROM panel^LN|||20250601100000",
        "OBX|1|NM|82237-9^ODI total^LN||34|%^percent^UCUM|||||F|||20250601101500",
        "OBX|2|CWE|72133-2^Pain intensity^LN||LA1234-5^Moderate^LN||||||F",
        "OBX|3|NM|38208-5^Pain severity^LN||abc||||||F",
    ])
    r = _conv(text)
    obs = _all(r, "Observation")
    assert len(obs) == 3
    score, answer, bad = obs
    assert score["valueQuantity"] == {"value": 34, "unit": "percent",
                                      "system": "http://unitsofmeasure.org", "code": "%"}
    assert score["effectiveDateTime"] == "2025-06-01T10:15:00-05:00"
    assert score["status"] == "final"
    assert answer["valueCodeableConcept"]["coding"][0]["code"] == "LA1234-5"
    assert answer["effectiveDateTime"] == "2025-06-01T10:00:00-05:00"  # from OBR-7
    assert "valueQuantity" not in bad
    assert ("hl7.bad_number", "OBX-5") in {(e.code, e.field) for e in r.errors}
    # Resent ORU: same ids.
    assert [o["id"] for o in obs] == [o["id"] for o in _all(_conv(text), "Observation")]


def test_z_segments_are_tolerated() -> None:
    r = _conv(_adt("A08", extra="ZPR|1|custom^stuff|x"))
    assert r.ok and _one(r, "Procedure")


def test_missing_required_segment_is_named() -> None:
    text = "\n".join([MSH.format(type="ADT^A01^ADT_A01", cid="X"), PID])
    r = _conv(text)
    err = next(e for e in r.errors if e.code == "hl7.missing_segment")
    assert err.segment == "PV1" and err.severity == "error"
    assert _one(r, "Patient")


def test_hl7apy_failure_names_segment_and_field(monkeypatch: pytest.MonkeyPatch) -> None:
    # hl7apy's TOLERANT parser accepts everything we could craft; its failure is simulated.
    import adapters.hl7v2.parse as parse_mod

    def boom_segment(text: str, **kw: object) -> None:
        if text.startswith("PR1"):
            raise ValueError("simulated")

    def boom_field(text: str, name: str, **kw: object) -> None:
        if name == "PR1_5":
            raise ValueError("simulated")

    monkeypatch.setattr(parse_mod, "parse_segment", boom_segment)
    monkeypatch.setattr(parse_mod, "parse_field", boom_field)
    import dataclasses

    with_hl7apy = dataclasses.replace(load_config(), hl7apy_parse=True)
    r = convert_message(_adt("A01").replace("\n", "\r").encode(), source="test", tz=CHICAGO, cfg=with_hl7apy)
    err = next(e for e in r.errors if e.code == "hl7.parse_error")
    assert (err.segment, err.field) == ("PR1", "PR1-5")
    assert any(e.code == "hl7.not_converted" and e.segment == "PR1" for e in r.errors)


def test_strict_check_reports_datatype_violations(tmp_path: Path) -> None:
    cfg_dir = tmp_path / "hl7v2"
    shutil.copytree(load_config().directory, cfg_dir)
    msgs = yaml.safe_load((cfg_dir / "messages.yaml").read_text())
    msgs["strict_check"] = True
    (cfg_dir / "messages.yaml").write_text(yaml.safe_dump(msgs))
    text = _adt("A01").replace("20250301093000", "2025-03-01").replace("\n", "\r")
    r = convert_message(text, source="t", tz=CHICAGO, cfg=load_config(cfg_dir))
    strict = [e for e in r.errors if e.code == "hl7.strict_violation"]
    assert ("PR1", "PR1-5") in {(e.segment, e.field) for e in strict}
    assert all(e.severity == "warning" for e in strict)


def test_oru_questionnaire_panel_becomes_questionnaire_response() -> None:
    text = "\n".join([
        MSH.format(type="ORU^R01^ORU_R01", cid="Q1"), PID,
        "OBR|1|ORD7|FIL7|82226-2^NDI panel^LN|||20250601100000",
        "OBX|1|CWE|82227-0^Pain intensity^LN||LA25855-0^Moderate pain^LN||||||F",
        "OBX|2|NM|82228-8^Personal care^LN||1||||||F",
        "OBX|3|NM|82237-9^NDI total^LN||14|{score}^score^UCUM|||||F",
        "OBR|2|ORD8|FIL8|12345-6^Other panel^LN|||20250601100000",
        "OBX|1|NM|8867-4^Heart rate^LN||60|/min^per minute^UCUM|||||F",
    ])
    r = _conv(text)
    assert r.ok, r.errors
    qr = _one(r, "QuestionnaireResponse")
    assert qr["questionnaire"] == "http://loinc.org/q/82226-2"
    assert qr["status"] == "completed"
    assert qr["authored"] == "2025-06-01T10:00:00-05:00"
    assert [i["linkId"] for i in qr["item"]] == ["82227-0", "82228-8", "82237-9"]
    assert qr["item"][0]["answer"] == [{"valueCoding": {
        "system": "http://loinc.org", "code": "LA25855-0", "display": "Moderate pain"}}]
    assert qr["item"][1]["answer"] == [{"valueInteger": 1}]
    # Score of the questionnaire and the OBX of the other panel are Observations; the
    # questionnaire's item answers are not.
    obs = {o["code"]["coding"][0]["code"]: o for o in _all(r, "Observation")}
    assert set(obs) == {"82237-9", "8867-4"}
    assert obs["82237-9"]["derivedFrom"] == [{"reference": f"QuestionnaireResponse/{qr['id']}"}]
    assert obs["82237-9"]["category"][0]["coding"][0]["code"] == "survey"
    assert "derivedFrom" not in obs["8867-4"] and "category" not in obs["8867-4"]


def test_hl7apy_parse_off_by_default_gives_the_results_it_gave_on() -> None:
    import dataclasses

    assert load_config().hl7apy_parse is False
    with_hl7apy = dataclasses.replace(load_config(), hl7apy_parse=True)
    for path in sorted(MESSAGES.glob("*.hl7")):
        raw = path.read_bytes()
        a = convert_message(raw, source=path.name, tz=CHICAGO, cfg=with_hl7apy)
        b = convert_message(raw, source=path.name, tz=CHICAGO)
        assert a.resources == b.resources and a.errors == b.errors, path.name

