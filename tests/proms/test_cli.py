"""``registry-adapter proms list`` on the bundled sample feed."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from registry_adapter.cli import cli
from tests.conftest import write_config_file

FIELDS = ["id", "patient_id", "case_id", "instrument", "timepoint", "authored", "status", "scores"]


def _run(config: Path, *args: str) -> str:
    runner = CliRunner(env={"COLUMNS": "200"})  # wide enough that the table does not wrap
    result = runner.invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_proms_list_shows_stored_responses_scored_or_not(tmp_path: Path) -> None:
    config = write_config_file(tmp_path)
    _run(config, "sync", "--full", "--json")
    rows = json.loads(_run(config, "proms", "list", "--json"))
    assert rows and all(list(r) == FIELDS for r in rows)
    by_id = {r["id"]: r for r in rows}
    first = by_id["qr-0001-90d"]
    assert (first["case_id"], first["instrument"], first["timepoint"]) == ("sample:proc-0001", "odi", "90d")
    assert first["status"] == "scored" and 0 <= first["scores"]["odi"] <= 100
    # Answered, recognised, but too many sections left out: stored, listed, not scored.
    unscorable = by_id["qr-0008-90d-partial"]
    assert unscorable["status"] == "not_scorable" and unscorable["scores"] == {"odi": None}
    assert unscorable["timepoint"] == "90d"

    one_case = json.loads(_run(config, "proms", "list", "--case", "sample:proc-0001", "--json"))
    assert one_case and {r["case_id"] for r in one_case} == {"sample:proc-0001"}
    table = _run(config, "proms", "list", "--case", "sample:proc-0001")
    assert "qr-0001-90d" in table and "scored" in table and f"odi {first['scores']['odi']:g}" in table
