"""The package: every CSV matches the data dictionary, no PHI, hashes match the manifest."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from registry_adapter.app import App
from registry_adapter.submission.dictionary import DICTIONARY, load_dictionary, validate_csv
from registry_adapter.submission.package import verify_package
from registry_adapter.submission.service import run_submission
from tests.conftest import SAMPLE_FEED
from tests.submission.conftest import SAMPLE_OUTCOMES, ingest


def _resources(folder: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(folder.iterdir()):
        text = path.read_text()
        if path.suffix == ".json":
            yield from (e["resource"] for e in json.loads(text)["entry"])
            continue
        for line in text.splitlines():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # the feed's deliberately broken line


def phi_of_input(*folders: Path, birth_dates: bool = True) -> set[str]:
    """Every name, MRN, phone, e-mail and address part (and birth date) the input holds."""
    found: set[str] = set()
    for folder in folders:
        for res in _resources(folder):
            if res.get("resourceType") != "Patient":
                continue
            for name in res.get("name", []):
                found.update([name.get("family", ""), *name.get("given", [])])
            found.update(i["value"] for i in res.get("identifier", []))
            found.update(t["value"] for t in res.get("telecom", []))
            for addr in res.get("address", []):
                found.update([*addr.get("line", []), addr.get("city", ""), addr.get("postalCode", "")])
            if birth_dates:
                found.add(res["birthDate"])
    return {v for v in found if v}


def _package(folder: Path) -> tuple[bytes, dict[str, bytes]]:
    (path,) = folder.glob("*.zip")
    data = path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return data, {name: zf.read(name) for name in zf.namelist()}


def test_package_matches_dictionary_has_no_phi_and_hashes_match(sample_app: App, tmp_path: Path) -> None:
    result = run_submission(sample_app, period="2025Q4", output=tmp_path / "out")
    assert result.counts["new"] == 41 and result.counts["held_back"] == 0
    data, files = _package(tmp_path / "out")
    dictionary = load_dictionary()
    assert set(files) == {*dictionary.files, "manifest.json"}
    for name in dictionary.files:
        assert validate_csv(dictionary, name, files[name], sample_app.codemaps) == [], name
    manifest = verify_package(data)
    assert manifest["data_dictionary_version"] == dictionary.version == "2026.1"
    assert manifest["site_id"] == "test-site" and manifest["period"] == "2025Q4"
    assert manifest["files"]["cases.csv"]["rows"] == 41
    phi = phi_of_input(SAMPLE_FEED, SAMPLE_OUTCOMES)
    assert "+1-555-0100-4477" in phi and "742 Evergreen Terrace" in phi and "DEMO-100004" in phi
    blob = b"\n".join(files.values()).decode()
    leaked = sorted(v for v in phi if v in blob)
    assert leaked == []
    # The labelled case's outcomes are in the package, under its key, not its id.
    assert "proc-0004" not in blob and "pat-0004" not in blob
    outcomes = files["outcomes.csv"].decode()
    assert outcomes.count(",surgical_site_infection,true,20") == 1
    assert (
        outcomes.count(",readmission_90d,true,45") == 1 and outcomes.count(",reoperation_365d,true,200") == 1
    )
    comorbid = files["comorbidities.csv"].decode()
    assert {line.split(",")[1] for line in comorbid.splitlines()[1:]} >= {
        "diabetes",
        "obesity",
        "tobacco_use",
    }


def test_validation_reports_each_bad_value(sample_app: App) -> None:
    dictionary = load_dictionary()
    bad = "case_key,outcome,occurred,days\nabc,ssi,yes,x\n,death,true,\n"
    assert validate_csv(dictionary, "outcomes.csv", bad, sample_app.codemaps) == [
        "outcomes.csv:2: outcome: 'ssi' is not one of the allowed values",
        "outcomes.csv:2: occurred: not true/false: 'yes'",
        "outcomes.csv:2: days: not an integer: 'x'",
        "outcomes.csv:3: case_key: required, empty",
    ]


def test_full_birth_date_only_when_configured(make_app: Callable[..., App], tmp_path: Path) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'b.db'}", submission={"birth_date": "full"})
    ingest(app, SAMPLE_FEED)
    run_submission(app, period="2025Q4", output=tmp_path / "out")
    _, files = _package(tmp_path / "out")
    cases = files["cases.csv"].decode()
    births = phi_of_input(SAMPLE_FEED) - phi_of_input(SAMPLE_FEED, birth_dates=False)
    assert births and all(b in cases for b in births)
    assert validate_csv(load_dictionary(), "cases.csv", cases, app.codemaps) == []


def test_dictionary_fields_taking_values_from_code_maps_resolve(sample_app: App) -> None:
    from registry_adapter.submission.dictionary import allowed_values, check_dictionary

    dictionary = load_dictionary()
    assert check_dictionary(dictionary, sample_app.codemaps) == []
    linked = [s for specs in dictionary.files.values() for s in specs if s.allowed_from]
    assert len(linked) == 4 and all(allowed_values(s, sample_app.codemaps) for s in linked)
    without = {k: v for k, v in sample_app.codemaps.items() if k != "comorbidities"}
    assert check_dictionary(dictionary, without) == [
        f"{DICTIONARY}: comorbidities.csv field comorbidity takes its values from comorbidities.comorbidity,"
        " which is not a code map column with a list of values"
    ]
