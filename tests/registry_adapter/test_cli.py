"""The registry-adapter command as hospital IT and registry staff run it (real subprocesses)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import FIXTURES, ROOT, SAMPLE_FEED, base_config, write_config_file

EXE = str(Path(sys.executable).with_name("registry-adapter"))


def run(
    *args: str,
    config: Path | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    cmd = [EXE, *(["--config", str(config)] if config else []), *args]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, cwd=cwd, env={**os.environ, **(env or {})}
    )
    if check:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


def write_config(tmp: Path, *, migrate: bool = True, **overrides: Any) -> Path:
    return write_config_file(tmp, migrate=migrate, **overrides)


def test_help_lists_the_commands() -> None:
    out = run("--help").stdout
    for command in ("sync", "import", "reprocess", "stats", "cases", "errors", "db"):
        assert f"  {command} " in out


def test_sync_then_json_listings(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    result = run("sync", "--json", config=cfg)
    (summary,) = json.loads(result.stdout)
    assert summary["source"] == "sample" and summary["outcome"] == "succeeded" and summary["received"] == 271
    stats = json.loads(run("stats", "--json", config=cfg).stdout)
    for key in (
        "staged",
        "patients",
        "procedures",
        "conditions",
        "cases",
        "prom_responses",
        "errors_open",
        "out_of_scope",
    ):
        assert isinstance(stats[key], int)
    assert stats["cases"] == 40
    cases = json.loads(run("cases", "list", "--json", config=cfg).stdout)
    assert len(cases) == 40
    case = next(c for c in cases if c["procedure_id"] == "proc-0001")
    assert {k: case[k] for k in ("module", "category", "surgery_date", "discharge_date", "patient_id")} == {
        "module": "lumbar",
        "category": "lumbar_discectomy",
        "surgery_date": "2024-03-15",
        "discharge_date": "2024-03-19",
        "patient_id": "pat-0001",
    }
    assert case["diagnoses"] == ["radiculopathy"]
    errors = json.loads(run("errors", "list", "--json", config=cfg).stdout)
    assert len(errors) == stats["errors_open"]
    for err in errors:
        assert {"resource_type", "resource_id", "code", "field", "value", "message", "cause_id"} <= set(err)
    unlisted = [e for e in errors if e["value"] == "cpt|22899"]
    assert len(unlisted) == 3 and len({e["cause_id"] for e in unlisted}) == 1


def test_import_files_and_the_human_summary(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, sources=[])
    out = run(
        "import", str(SAMPLE_FEED / "Procedure.ndjson"), str(SAMPLE_FEED / "Patient-bundle.json"), config=cfg
    ).stdout
    assert "import: succeeded" in out and "Open mapping errors by cause" in out
    assert "CPT code 22899 is not in code map spine-procedures" in out
    stats = json.loads(run("stats", "--json", config=cfg).stdout)
    assert stats["procedures"] > 0 and stats["patients"] == 5


def test_db_override_and_upgrade(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, migrate=False)
    other = tmp_path / "elsewhere.db"
    assert "database at revision" in run("--db", f"sqlite:///{other}", "db", "upgrade", config=cfg).stdout
    assert "already current" in run("--db", f"sqlite:///{other}", "db", "upgrade", config=cfg).stdout
    assert other.exists() and not (tmp_path / "registry.db").exists()


def test_config_from_environment_and_clear_config_errors(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    assert json.loads(run("stats", "--json", env={"REGISTRY_ADAPTER_CONFIG": str(cfg)}).stdout)["staged"] == 0
    bad = tmp_path / "bad.yaml"
    data = base_config(tmp_path)
    del data["site"]["timezone"]
    bad.write_text(yaml.safe_dump(data))
    proc = run("stats", config=bad, check=False)
    assert proc.returncode == 2 and "site.timezone: Field required" in proc.stderr
    missing = run("stats", config=tmp_path / "none.yaml", check=False)
    assert missing.returncode == 2 and "config.example.yaml" in missing.stderr


def test_no_patient_data_in_logs(tmp_path: Path) -> None:
    """Names, MRNs, birth dates and emails of the feed never reach the log stream."""
    cfg = write_config(tmp_path, logging={"format": "json", "level": "DEBUG"})
    proc = run("sync", config=cfg)
    logs = proc.stderr
    assert '"event": "sync.finish"' in logs
    feed = [json.loads(line) for line in (SAMPLE_FEED / "Patient.ndjson").read_text().splitlines()]
    for patient in feed:
        for secret in (
            patient["identifier"][0]["value"],
            patient["birthDate"],
            patient["telecom"][0]["value"],
            patient["name"][0]["family"],
        ):
            assert secret not in logs


def test_the_demo_runs_from_the_example_config(tmp_path: Path) -> None:
    """What `make demo` runs, in a copy of the project layout (the example config as it is)."""
    work = tmp_path / "site"
    (work / "examples").mkdir(parents=True)
    shutil.copy(ROOT / "config.example.yaml", work / "config.example.yaml")
    shutil.copytree(SAMPLE_FEED, work / "examples" / "sample-feed")
    run("db", "upgrade", config=work / "config.example.yaml", cwd=work)  # as `make demo` does
    out = run("sync", "--full", config=work / "config.example.yaml", cwd=work).stdout
    assert "40 cases" in out and "Open mapping errors by cause" in out
    assert (work / "var" / "registry.db").exists() and (work / "var" / "pseudonym.key").exists()


def test_mappings_check_conformance_and_test(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    assert "all good: 5 code maps" in run("mappings", "check", config=cfg).stdout
    # A broken site copy of the code maps is reported with file and line, exit status 1.
    site_maps = tmp_path / "codemaps"
    shutil.copytree(ROOT / "mappings" / "codemaps", site_maps)
    table = site_maps / "spine-diagnoses.csv"
    table.write_text(table.read_text() + "icd10cm,M48.06,prefix,stenosis,lumbar,dup,x\n")
    (tmp_path / "site").mkdir()
    broken = write_config(tmp_path / "site", mappings={"codemaps": str(site_maps)})
    proc = run("mappings", "check", config=broken, check=False)
    assert (
        proc.returncode == 1
        and "spine-diagnoses.csv:" in proc.stderr
        and "duplicate code M48.06 (first at line" in proc.stderr
    )
    report = tmp_path / "report.json"
    suite = FIXTURES / "sql-on-fhir-v2" / "tests"
    out = run("mappings", "conformance", "--tests", str(suite), "--report", str(report)).stdout
    assert "134/134 tests passed" in out
    data = json.loads(report.read_text())
    assert sum(len(f["tests"]) for f in data.values()) == 134
    assert all(t["result"]["passed"] for f in data.values() for t in f["tests"])
    resource = tmp_path / "proc.json"
    resource.write_text((SAMPLE_FEED / "Procedure.ndjson").read_text().splitlines()[0])
    shown = json.loads(
        run("mappings", "test", str(ROOT / "mappings/views/procedure.yaml"), str(resource), config=cfg).stdout
    )
    assert shown["disposition"] == "mapped" and shown["row"]["category"] == "lumbar_discectomy"


def test_one_failing_source_does_not_stop_the_others(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        sources=[
            {
                "name": "gone",
                "type": "fhir_rest",
                "base_url": "http://127.0.0.1:9/fhir",
                "http": {"retries": 0, "timeout": [1, 1]},
            },
            {"name": "sample", "type": "files", "path": str(SAMPLE_FEED)},
        ],
    )
    proc = run("sync", "--json", config=cfg, check=False)
    assert proc.returncode == 1
    assert "gone: sync failed" in proc.stderr
    (summary,) = json.loads(proc.stdout)
    assert summary["source"] == "sample" and summary["outcome"] == "succeeded"
    runs = json.loads(run("runs", "list", "--json", config=cfg).stdout)
    assert {(r["source"], r["outcome"]) for r in runs} == {("gone", "failed"), ("sample", "succeeded")}


def test_a_source_being_synced_elsewhere_is_refused(tmp_path: Path) -> None:
    from registry_adapter.app import build_app
    from registry_adapter.config import load_settings
    from registry_store.leases import LeaseLock

    cfg = write_config(tmp_path)
    run("db", "upgrade", config=cfg)
    app = build_app(load_settings(cfg))
    other = LeaseLock(app.engine, "sync:sample", ttl_seconds=600, owner="other-host:1")
    assert other.acquire()
    proc = run("sync", config=cfg, check=False)
    assert proc.returncode == 1 and "sample: source sample is being synced by another process" in proc.stderr
    other.release()
    assert run("sync", config=cfg).returncode == 0
