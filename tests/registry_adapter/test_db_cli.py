"""``db current --check`` (the container's health check) and ``db downgrade`` (rollback)."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from registry_adapter.cli import cli
from tests.conftest import base_config


def test_check_fails_until_upgraded_and_downgrade_rolls_back(tmp_path: Path, db_url: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base_config(tmp_path)))
    runner = CliRunner()

    def db(*args: str) -> tuple[int, str]:
        result = runner.invoke(cli, ["--config", str(config), "--db", db_url, "db", *args])
        return result.exit_code, result.stdout

    assert db("current", "--check")[0] == 1
    assert db("upgrade")[0] == 0
    code, text = db("current", "--check")
    head = text.split("head ")[1].strip()
    assert code == 0 and f"current {head}" in text
    code, text = db("downgrade", "--revision", "-1")  # one step back
    assert code == 0 and "database at revision" in text and head not in text
    assert db("current", "--check")[0] == 1
    assert db("upgrade")[0] == 0 and db("current", "--check")[0] == 0
