"""HL7 v2 identity and events end to end through ``registry-adapter import``: diagnoses keyed by
stay, planned versus performed procedures, corrected surgery dates, multi-visit BAR^P01,
contact details, v2-to-FHIR IG code tables and message types recognised from MSH-9."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from tests.registry_adapter.test_cli import run, write_config
from tests.registry_adapter.test_hl7_cli import query


def msh(control_id: str, msg_type: str, when: str = "20250304120000") -> str:
    return f"MSH|^~\\&|ADT|SPINEHOSP|REGISTRY|SITE|{when}||{msg_type}|{control_id}|P|2.5.1"


def pid(mrn: str = "MRN-1", extra: dict[int, str] | None = None) -> str:
    fields = {1: "1", 3: f"{mrn}^^^SPINEHOSP^MR", 5: "Testperson^Alex^^^^^L", 7: "19600229", 8: "F"}
    fields.update(extra or {})
    return "|".join(["PID", *(fields.get(i, "") for i in range(1, max(fields) + 1))])


def pv1(visit: str | None, admit: str, *, klass: str = "I", discharge: str = "") -> str:
    fields = {1: "1", 2: klass, 44: admit, 45: discharge}
    if visit:
        fields[19] = f"{visit}^^^SPINEHOSP^VN"
    return "|".join(["PV1", *(fields.get(i, "") for i in range(1, 46))])


def pr1(cpt: str, when: str, set_id: int = 1) -> str:
    return f"PR1|{set_id}||{cpt}^Spine surgery^C4||{when}|||||||SURG1^Cutter^Casey"


def dg1(code: str, set_id: int = 1) -> str:
    return f"DG1|{set_id}||{code}^Spinal stenosis^I10||20250101|F"


def message(*segments: str) -> str:
    return "\r".join(segments) + "\r"


def import_messages(tmp: Path, name: str, *messages: str) -> dict[str, Any]:
    cfg = tmp / "config.yaml"
    if not cfg.exists():
        write_config(tmp, sources=[])
    path = tmp / name
    path.write_text("".join(messages))
    out: dict[str, Any] = json.loads(run("import", "--json", str(path), config=cfg).stdout)
    return out


def staged(tmp: Path, rtype: str) -> list[dict[str, Any]]:
    rows = query(tmp, f"SELECT raw FROM staging WHERE resource_type = '{rtype}' AND status != 'deleted'")
    return [json.loads(r[0]) for r in rows]


def active_cases(tmp: Path) -> list[tuple[Any, ...]]:
    return query(
        tmp, "SELECT surgery_date, diagnosis_codes, encounter_id FROM cases WHERE status = 'active' "
        "ORDER BY surgery_date",
    )


def test_a_revision_with_the_same_code_leaves_the_first_surgery_its_diagnoses(tmp_path: Path) -> None:
    first = message(msh("D1", "ADT^A03^ADT_A03", "20240310120000"), pid(),
                    pv1("V-2024", "20240301063000", discharge="20240305100000"),
                    dg1("M48.062"), pr1("22630", "20240302081500"))
    import_messages(tmp_path, "2024.hl7", first)
    revision = message(msh("D2", "ADT^A03^ADT_A03", "20250310120000"), pid(),
                       pv1("V-2025", "20250301063000", discharge="20250305100000"),
                       dg1("M48.062"), pr1("22630", "20250302081500"))
    import_messages(tmp_path, "2025.hl7", revision)
    cases = active_cases(tmp_path)
    assert [(c[0], json.loads(c[1])) for c in cases] == [
        ("2024-03-02", ["M48.062"]), ("2025-03-02", ["M48.062"])
    ]
    assert len(staged(tmp_path, "Condition")) == 2


def test_pre_admit_pending_admit_class_p_and_future_dates_are_planned(tmp_path: Path) -> None:
    pre_admit = message(msh("P1", "ADT^A05^ADT_A05", "20250220120000"), pid("MRN-A"),
                        pv1("V-A", "20250301063000"), pr1("22630", "20250220081500"))
    pending = message(msh("P2", "ADT^A14^ADT_A05", "20250220120000"), pid("MRN-B"),
                      pv1("V-B", "20250301063000"), pr1("22630", "20250220081500"))
    class_p = message(msh("P3", "ADT^A01^ADT_A01", "20250220120000"), pid("MRN-C"),
                      pv1("V-C", "20250301063000", klass="P"), pr1("22630", "20250220081500"))
    future = message(msh("P4", "ADT^A01^ADT_A01", "20250220120000"), pid("MRN-D"),
                     pv1("V-D", "20250219063000"), pr1("22630", "20250302081500"))
    import_messages(tmp_path, "planned.hl7", pre_admit, pending, class_p, future)
    assert sorted(p["status"] for p in staged(tmp_path, "Procedure")) == ["preparation"] * 4
    assert sorted(e["status"] for e in staged(tmp_path, "Encounter")) == [
        "in-progress", "planned", "planned", "planned"
    ]
    # The surgery reported done (A03 after the date): the same Procedure becomes completed.
    done = message(msh("P5", "ADT^A03^ADT_A03", "20250305120000"), pid("MRN-D"),
                   pv1("V-D", "20250219063000", discharge="20250304100000"),
                   pr1("22630", "20250302081500"))
    import_messages(tmp_path, "done.hl7", done)
    rows = query(tmp_path, "SELECT status FROM procedures ORDER BY status")
    assert [r[0] for r in rows] == ["completed"] + ["preparation"] * 3


def test_a_corrected_surgery_date_updates_the_procedure(tmp_path: Path) -> None:
    admit = message(msh("C1", "ADT^A01^ADT_A01", "20250301120000"), pid(),
                    pv1("V-1", "20250301063000"), pr1("22630", "20250301081500"))
    import_messages(tmp_path, "a01.hl7", admit)
    corrected = message(msh("C2", "ADT^A08^ADT_A01", "20250303120000"), pid(),
                        pv1("V-1", "20250301063000"), pr1("22630", "20250302081500"))
    import_messages(tmp_path, "a08.hl7", corrected)
    assert query(tmp_path, "SELECT surgery_date FROM procedures") == [("2025-03-02",)]
    assert [c[0] for c in active_cases(tmp_path)] == ["2025-03-02"]


def test_every_visit_of_a_bar_p01_is_converted_with_its_own_procedures(tmp_path: Path) -> None:
    bar = message(msh("B1", "BAR^P01^BAR_P01", "20250601120000"), pid(),
                  pv1("V-1", "20250301063000", discharge="20250304100000"),
                  dg1("M48.062"), pr1("22630", "20250302081500"),
                  pv1("V-2", "20250501063000", discharge="20250504100000"),
                  dg1("M50.12"), pr1("22551", "20250502081500"))
    import_messages(tmp_path, "bar.hl7", bar)
    encounters = {e["identifier"][0]["value"]: e["id"] for e in staged(tmp_path, "Encounter")}
    assert set(encounters) == {"V-1", "V-2"}
    def visits(rtype: str) -> dict[str, str]:
        return {r["code"]["coding"][0]["code"]: r["encounter"]["reference"] for r in staged(tmp_path, rtype)}

    first, second = f"Encounter/{encounters['V-1']}", f"Encounter/{encounters['V-2']}"
    assert visits("Procedure") == {"22630": first, "22551": second}
    assert visits("Condition") == {"M48.062": first, "M50.12": second}
    cases = active_cases(tmp_path)
    assert [(c[0], json.loads(c[1]), c[2]) for c in cases] == [
        ("2025-03-02", ["M48.062"], encounters["V-1"]), ("2025-05-02", ["M50.12"], encounters["V-2"])
    ]


def test_address_phone_and_email_reach_the_patient_row(tmp_path: Path) -> None:
    contact = {
        11: "12 Main St^Apt 4^Springfield^IL^62701^USA^H",
        13: "^PRN^PH^^1^217^5550100~^NET^Internet^alex@example.org",
        14: "^WPN^PH^^^217^5550199^12",
    }
    admit = message(msh("T1", "ADT^A01^ADT_A01"), pid(extra=contact), pv1("V-1", "20250301063000"))
    import_messages(tmp_path, "contact.hl7", admit)
    (patient,) = staged(tmp_path, "Patient")
    assert patient["address"] == [{"line": ["12 Main St", "Apt 4"], "city": "Springfield", "state": "IL",
                                   "postalCode": "62701", "country": "USA", "use": "home"}]
    assert patient["telecom"] == [
        {"system": "phone", "value": "+1 217 5550100", "use": "home"},
        {"system": "email", "value": "alex@example.org"},
        {"system": "phone", "value": "217 5550199 X12", "use": "work"},
    ]
    assert query(tmp_path, "SELECT email, phone FROM patients") == [("alex@example.org", "+1 217 5550100")]


def test_code_tables_follow_the_v2_to_fhir_ig(tmp_path: Path) -> None:
    # Name types D (customary -> usual) and A (alias: unmatched in the IG); class U; a visit
    # number whose CX-5 says AN.
    names = {5: "Testperson^Alex^^^^^D~Tp^Al^^^^^A"}
    visit = pv1("V-1", "20250301063000", klass="U").replace("^SPINEHOSP^VN", "^SPINEHOSP^AN")
    unknown_class = message(msh("K1", "ADT^A01^ADT_A01"), pid(extra=names), visit)
    import_messages(tmp_path, "codes.hl7", unknown_class)
    (enc,) = staged(tmp_path, "Encounter")
    assert enc["class"] == {"system": "http://terminology.hl7.org/CodeSystem/v2-0004", "code": "U",
                            "display": "Unknown"}
    assert enc["status"] == "unknown"
    assert enc["identifier"][0]["type"] == {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "VN"}],
        "text": "visit number",
    }
    (patient,) = staged(tmp_path, "Patient")
    assert [n.get("use") for n in patient["name"]] == ["usual", None]


def test_an_unsupported_type_is_recognised_from_msh_9_before_parsing(tmp_path: Path) -> None:
    # Declared UTF-8 but not UTF-8: a full parse would fail with hl7.bad_encoding.
    raw = (msh("U1", "ADT^A99^ADT_A01") + "||||||UNICODE UTF-8\rPID|1||MRN-1^^^SPINEHOSP^MR||Caf\xe9^A\r")
    path = tmp_path / "a99.hl7"
    path.write_bytes(raw.encode("latin-1"))
    cfg = write_config(tmp_path, sources=[])
    out = json.loads(run("import", "--json", str(path), config=cfg).stdout)
    assert out["out_of_scope"] == 1 and out["failed"] == 0
    assert query(tmp_path, "SELECT code FROM mapping_errors WHERE status = 'open'") == []


ACTIVE = "SELECT id, patient_id FROM cases WHERE status = 'active'"


def test_a40_merge_moves_records_cases_and_reminders_to_the_surviving_patient(tmp_path: Path) -> None:
    surgery = message(msh("M1", "ADT^A03^ADT_A03", "20250310120000"), pid("MRN-OLD"),
                      pv1("V-1", "20250301063000", discharge="20250305100000"),
                      dg1("M48.062"), pr1("22630", "20250302081500"))
    import_messages(tmp_path, "old.hl7", surgery)
    run("reminders", "plan", "--json", "--as-of", "2025-03-10", config=tmp_path / "config.yaml")
    ((case_id, old_patient),) = query(tmp_path, ACTIVE)
    reminders = query(tmp_path, "SELECT id, case_id FROM reminders ORDER BY id")
    assert reminders and {r[1] for r in reminders} == {case_id}

    merge = message(msh("M2", "ADT^A40^ADT_A39", "20250401120000"), pid("MRN-NEW"),
                    "MRG|MRN-OLD^^^SPINEHOSP^MR")
    import_messages(tmp_path, "merge.hl7", merge)
    (new_patient,) = {r[0] for r in query(tmp_path, "SELECT id FROM patients WHERE merged_into IS NULL")}
    assert new_patient != old_patient
    assert query(tmp_path, ACTIVE) == [(case_id, new_patient)]
    for table in ("encounters", "procedures", "conditions"):
        assert query(tmp_path, f"SELECT DISTINCT patient_id FROM {table}") == [(new_patient,)], table
    assert query(tmp_path, "SELECT id, case_id FROM reminders ORDER BY id") == reminders
    assert query(tmp_path, f"SELECT merged_into FROM patients WHERE id = '{old_patient}'") == [(new_patient,)]
    (audit,) = query(tmp_path, "SELECT action, target, after FROM audit_log")
    assert audit[0] == "patient.merge" and old_patient in audit[1]
    assert json.loads(audit[2])["cases"] == [case_id]
    (review,) = query(tmp_path, "SELECT severity, field, message FROM mapping_errors "
                      "WHERE code = 'hl7.patient_merged' AND status = 'open'")
    assert review[:2] == ("warning", "MRG-1")
    assert case_id in review[2] and "1 procedures" in review[2] and "reminder" in review[2]

    # A late message for the old identifier is filed under the surviving patient: no second case.
    late = message(msh("M3", "ADT^A08^ADT_A01", "20250402120000"), pid("MRN-OLD"),
                   pv1("V-1", "20250301063000", discharge="20250305100000"),
                   dg1("M48.062"), pr1("22630", "20250302081500"))
    import_messages(tmp_path, "late.hl7", late)
    assert query(tmp_path, ACTIVE) == [(case_id, new_patient)]


def test_a47_change_identifier_marks_the_old_identifier_merged(tmp_path: Path) -> None:
    admit = message(msh("I1", "ADT^A01^ADT_A01"), pid("MRN-OLD"), pv1("V-1", "20250301063000"),
                    pr1("22630", "20250302081500"))
    change = message(msh("I2", "ADT^A47^ADT_A30", "20250305120000"), pid("MRN-NEW"),
                     "MRG|MRN-OLD^^^SPINEHOSP^MR")
    import_messages(tmp_path, "a47.hl7", admit, change)
    merged = query(tmp_path, "SELECT id, merged_into FROM patients ORDER BY merged_into IS NULL")
    assert len(merged) == 2 and merged[0][1] == merged[1][0]
    assert query(tmp_path, "SELECT patient_id FROM procedures") == [(merged[1][0],)]


def test_a02_transfer_updates_the_stay(tmp_path: Path) -> None:
    admit = message(msh("X1", "ADT^A01^ADT_A01"), pid(), pv1("V-1", "20250301063000"))
    transfer = message(msh("X2", "ADT^A02^ADT_A02", "20250302120000"), pid(),
                       pv1("V-1", "20250301063000", klass="O"))
    import_messages(tmp_path, "a02.hl7", admit, transfer)
    assert query(tmp_path, "SELECT resource_id, status FROM staging WHERE resource_type = 'HL7v2Message' "
                 "ORDER BY id") == [("SPINEHOSP|X1", "mapped"), ("SPINEHOSP|X2", "mapped")]
    (enc,) = staged(tmp_path, "Encounter")
    assert enc["class"]["code"] == "AMB"


def test_reprocessing_staged_v2_messages_removes_records_of_older_identity_rules(tmp_path: Path) -> None:
    """As the old rules left it: the A01 (surgery 03-01) and the A08 correcting it to 03-02
    made two Procedures (the date was in the id), so two active cases. ``reprocess --type
    HL7v2Message`` re-converts them; what they no longer make is deleted."""
    admit = message(msh("C1", "ADT^A01^ADT_A01", "20250301120000"), pid(),
                    pv1("V-1", "20250301063000"), pr1("22630", "20250301081500"))
    corrected = message(msh("C2", "ADT^A08^ADT_A01", "20250303120000"), pid(),
                        pv1("V-1", "20250301063000"), pr1("22630", "20250302081500"))
    import_messages(tmp_path, "a01.hl7", admit)
    import_messages(tmp_path, "a08.hl7", corrected)
    (current,) = staged(tmp_path, "Procedure")
    legacy = {**current, "id": "legacy-date-keyed-id", "performedDateTime": "2025-03-01T08:15:00-06:00"}
    with sqlite3.connect(tmp_path / "registry.db") as db:
        db.execute(
            "INSERT INTO staging (source, resource_type, resource_id, content_type, content_hash, raw, "
            "origin, status, received_at, updated_at) SELECT source, resource_type, ?, content_type, "
            "'legacy', ?, 'hl7v2 SPINEHOSP|C1', 'pending', received_at, updated_at FROM staging "
            "WHERE resource_type = 'Procedure'",
            ("legacy-date-keyed-id", json.dumps(legacy).encode()),
        )
    cfg = tmp_path / "config.yaml"
    run("reprocess", "--type", "Procedure", "--json", config=cfg)
    assert [c[0] for c in active_cases(tmp_path)] == ["2025-03-01", "2025-03-02"]

    run("reprocess", "--type", "HL7v2Message", "--json", config=cfg)
    assert [c[0] for c in active_cases(tmp_path)] == ["2025-03-02"]
    assert query(tmp_path, "SELECT id FROM procedures") == [(current["id"],)]
    # Importing the old messages again leaves it so.
    import_messages(tmp_path, "a01-again.hl7", admit, corrected)
    assert [c[0] for c in active_cases(tmp_path)] == ["2025-03-02"]
