"""Outcomes per case from the sample feed's hand-labelled records (examples/sample-outcomes)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from examples.generate_sample_feed import LABELLED
from mappings.codemaps import load_codemaps
from mappings.outcomes import check_definitions, load_definitions
from registry_adapter.app import App
from registry_adapter.mapping_tools import check_all
from registry_adapter.submission.service import refresh_outcomes
from tests.conftest import SAMPLE_FEED
from tests.submission.conftest import SAMPLE_OUTCOMES, ingest


def _outcomes(app: App) -> dict[str, dict[str, Any]]:
    with app.engine.begin() as conn:
        return refresh_outcomes(conn, app)


def test_labelled_outcomes_come_out(sample_app: App) -> None:
    got = _outcomes(sample_app)
    for case_id, expected in LABELLED.items():
        case = got[case_id]
        for name, value in expected.items():
            if name == "comorbidities":
                assert {c["comorbidity"]: c["code"] for c in case["comorbidities"]} == value, case_id
            elif name == "complications":
                assert {c["complication"]: c["days"] for c in case["complications"]} == value, case_id
            else:
                assert case[name] == value, (case_id, name)
    # A case without labelled outcomes has none: the labels are what makes them.
    quiet = got["sample:proc-0001"]
    assert quiet["complications"] == [] and not quiet["readmission_90d"] and quiet["reoperation_days"] is None


def test_late_data_changes_an_earlier_case(make_app: Callable[..., App], tmp_path: Path) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'late.db'}")
    ingest(app, SAMPLE_FEED)
    before = _outcomes(app)["sample:proc-0004"]
    assert before["readmission_days"] is None and before["complications"] == []
    ingest(app, SAMPLE_OUTCOMES)  # next month's records about the same patient
    after = _outcomes(app)["sample:proc-0004"]
    assert after["readmission_days"] == 45 and after["complications"][0]["days"] == 20


def test_bundled_definitions_and_code_maps_check_clean(sqlite_app: App) -> None:
    defs = load_definitions()
    assert defs.readmission_windows == (30, 90) and defs.reoperation_windows == (30, 90, 365)
    assert check_definitions(defs, load_codemaps()) == []
    problems, counts = check_all(sqlite_app)
    assert problems == [] and counts["code maps"] >= 4


def test_mappings_check_names_a_row_without_its_source(tmp_path: Path, make_app: Callable[..., App]) -> None:
    site = tmp_path / "codemaps"
    site.mkdir()
    bundled = Path(load_codemaps()["complications"].table)
    (site / "complications.yaml").write_text(bundled.with_suffix(".yaml").read_text())
    rows = bundled.read_text().splitlines()
    rows.append("icd10cm,K91.89,exact,sepsis,90,Other postprocedural complications of digestive system,")
    (site / "complications.csv").write_text("\n".join(rows) + "\n")
    app = make_app(f"sqlite:///{tmp_path / 'c.db'}", mappings={"codemaps": str(site)})
    problems, _ = check_all(app)
    assert problems == [f"{site / 'complications.csv'}:{len(rows)}: source must cite ICD-10-CM FY2026"]


def test_site_outcome_definitions_replace_the_bundled(tmp_path: Path, sqlite_app: App) -> None:
    data = yaml.safe_load(load_definitions().path.read_text())
    data["readmission"]["windows_days"] = [30, 60]
    (tmp_path / "outcomes.yaml").write_text(yaml.safe_dump(data))
    assert load_definitions(tmp_path).readmission_windows == (30, 60)
    data["readmission"]["windows_days"] = "soon"
    (tmp_path / "outcomes.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(Exception, match=r"readmission\.windows_days must be a list"):
        load_definitions(tmp_path)


GOLDEN = Path(__file__).with_name("golden") / "sample_outcomes.json"


def test_outcomes_of_every_sample_case_match_the_golden_file(sqlite_app: App) -> None:
    """Every outcome field of every case of the sample feed + labelled outcomes. A change to
    the definitions or code maps that moves any of them shows here; regenerate on purpose with
    REGENERATE_GOLDEN=1 and review the diff."""
    got = json.dumps(_outcomes(sqlite_app), indent=1, sort_keys=True) + "\n"
    if os.environ.get("REGENERATE_GOLDEN"):
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text()


def test_discharge_disposition_from_pv1_36_through_the_v2_conversion(
    make_app: Callable[..., App], tmp_path: Path
) -> None:
    golden = Path(__file__).parents[1] / "golden" / "hl7v2" / "ADT-A03.hl7"
    segments = golden.read_text().replace("\n", "\r").strip("\r").split("\r")
    pv1 = segments[3].split("|")
    pv1 += [""] * (46 - len(pv1))
    pv1[36] = "01"  # HL7 table 0112: discharged to home or self care
    segments[3] = "|".join(pv1)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    message = inbox / "a03.hl7"
    message.write_text("\r".join(segments) + "\r")
    os.utime(message, (1, 1))  # long settled: the drop folder leaves files still being written
    app = make_app(f"sqlite:///{tmp_path / 'v2.db'}")
    ingest(app, inbox, name="adt", kind="hl7v2_files")
    (case,) = _outcomes(app).values()
    assert case["discharge_disposition"] == "home" and case["length_of_stay_days"] == 3


def test_a_readmission_the_feed_marks_planned_is_reported_not_counted(
    make_app: Callable[..., App], tmp_path: Path
) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'p.db'}")
    ingest(app, SAMPLE_FEED)
    case = _outcomes(app)["sample:proc-0001"]  # discharged 2024-03-19
    assert not case["planned_readmission"] and case["readmission_days"] is None
    later = tmp_path / "later"
    later.mkdir()
    stays = [
        # Planned by its reason (surgical aftercare, planned-readmissions code map), day 10.
        ("enc-0001-aftercare", "2024-03-29", {"reasonCode": [{"coding": [
            {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "Z48.811"}]}]}),
        # Planned by its priority (elective), day 20.
        ("enc-0001-staged", "2024-04-08", {"priority": {"coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActPriority", "code": "EL"}]}}),
        # An emergency stay on day 70: the one readmission that counts.
        ("enc-0001-er", "2024-05-28", {}),
    ]  # fmt: skip
    lines = [
        json.dumps(
            {
                "resourceType": "Encounter",
                "id": eid,
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                "subject": {"reference": "Patient/pat-0001"},
                "period": {"start": f"{start}T08:00:00-05:00", "end": f"{start}T18:00:00-05:00"},
                **extra,
            }
        )
        for eid, start, extra in stays
    ]
    (later / "Encounter.ndjson").write_text("\n".join(lines) + "\n")
    ingest(app, later)
    case = _outcomes(app)["sample:proc-0001"]
    assert case["planned_readmission"] is True
    assert case["readmission_days"] == 70 and not case["readmission_30d"] and case["readmission_90d"]


def test_outcomes_a_chunk_of_patients_at_a_time_are_the_whole_run(sample_app: App) -> None:
    """Stored chunk by chunk (as after every import), whole store or touched patients, they are
    exactly what one whole pass computes and stores; outcomes of a case no longer active are
    dropped either way."""
    from sqlalchemy import select, update

    from registry_adapter.submission.service import store_outcomes
    from registry_store.tables import CASE_OUTCOMES, CASES

    whole = _outcomes(sample_app)
    with sample_app.engine.begin() as conn:
        conn.execute(update(CASES).where(CASES.c.id == "sample:proc-0001").values(status="withdrawn"))
        assert store_outcomes(conn, sample_app, per_chunk=2) == len(whole) - 1
        stored = {r.case_id: r.outcomes for r in conn.execute(select(CASE_OUTCOMES))}
        patients = {r.patient_id for r in conn.execute(select(CASES.c.patient_id))}
        assert len(patients) > 4
        assert store_outcomes(conn, sample_app, {"sample": patients}, per_chunk=2) == len(whole) - 1
        again = {r.case_id: r.outcomes for r in conn.execute(select(CASE_OUTCOMES))}
    expected = {k: v for k, v in whole.items() if k != "sample:proc-0001"}
    assert stored == expected and again == expected
