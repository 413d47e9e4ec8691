"""`import` of files that hold no usable records: binary, empty, cut short, malformed.

Each is counted as invalid in the summary, named (file, and line where there is one) in its
own cause, shown without a dump of its bytes, and an import that accepted nothing exits 1.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from tests.conftest import SAMPLE_FEED
from tests.registry_adapter.test_cli import run, write_config

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))


def _bad_files(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    files = {
        "intake.binary_file": folder / "scan.json",
        "intake.empty_file": folder / "Patient.ndjson",
        "intake.unreadable_file": folder / "Procedure.ndjson.gz",
        "intake.malformed_json": folder / "Condition.ndjson",
    }
    files["intake.binary_file"].write_bytes(PNG)
    files["intake.empty_file"].write_bytes(b"")
    whole = gzip.compress((SAMPLE_FEED / "Procedure.ndjson").read_bytes())
    files["intake.unreadable_file"].write_bytes(whole[:40])  # cut short in transit
    files["intake.malformed_json"].write_bytes(b'{"resourceType": "Condition", "id": \n')
    return files


def test_only_bad_files_each_reported_and_exit_1(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, sources=[])
    files = _bad_files(tmp_path / "sent")
    proc = run("import", *map(str, files.values()), config=cfg, check=False)
    assert proc.returncode == 1, proc.stderr
    summary = proc.stdout.splitlines()[0]
    assert "import: succeeded" in summary and "invalid 4," in summary
    assert "nothing accepted: 4 invalid input(s)" in proc.stderr
    shown = proc.stdout + proc.stderr
    for dump in ("\\x", "b'", "PNG", "IHDR", "right here"):
        assert dump not in shown, dump

    errors = json.loads(run("errors", "list", "--json", config=cfg).stdout)
    by_code = {e["code"]: e for e in errors}
    assert set(by_code) == set(files)
    assert len({e["cause_id"] for e in errors}) == 4  # each problem its own cause
    assert by_code["intake.binary_file"]["message"].startswith("scan.json is not UTF-8 text")
    assert by_code["intake.empty_file"]["message"] == "Patient.ndjson is empty; no records in it"
    assert by_code["intake.unreadable_file"]["message"].startswith("cannot read Procedure.ndjson.gz: ")
    malformed = by_code["intake.malformed_json"]["message"]
    assert malformed.startswith("Condition.ndjson is not valid JSON at line 2")
    causes = run("errors", "causes", config=cfg).stdout
    assert "scan.json" in causes and "Patient.ndjson" in causes and "\\x" not in causes


def test_a_bad_file_beside_good_ones_does_not_fail_the_import(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, sources=[])
    files = _bad_files(tmp_path / "sent")
    proc = run("import", str(files["intake.binary_file"]), str(SAMPLE_FEED / "Patient.ndjson"), config=cfg)
    assert "invalid 1," in proc.stdout and "nothing accepted" not in proc.stderr
    empty = run("import", "--json", str(files["intake.empty_file"]), config=cfg, check=False)
    as_json = json.loads(empty.stdout)
    assert as_json["invalid"] == 1 and as_json["received"] == 1


def test_a_document_that_is_not_json_shows_no_excerpt(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, sources=[])
    doc = tmp_path / "bundle.json"
    doc.write_text('{\n  "resourceType": "Bundle",\n  "entry": [ {"resource": Smith-1234567} ]\n}\n')
    proc = run("import", str(doc), config=cfg, check=False)
    assert proc.returncode == 1
    [error] = json.loads(run("errors", "list", "--json", config=cfg).stdout)
    assert error["message"].startswith("bundle.json is not valid JSON at line 3")
    assert "Smith" not in error["message"] and "1234567" not in proc.stdout + proc.stderr
