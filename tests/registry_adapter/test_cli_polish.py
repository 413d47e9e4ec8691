"""The command line's manners: help everywhere, checked option values, global options in
either place, whole output in pipes, logs apart from results."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from registry_adapter.cli import cli
from tests.registry_adapter.test_cli import run, write_config


def _walk(command: click.Command, path: tuple[str, ...]) -> list[str]:
    ctx = click.Context(command, info_name=path[-1] if path else "registry-adapter")
    missing = [] if (command.help or command.short_help) else [" ".join(path) or "registry-adapter"]
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden and not param.help:
            missing.append(f"{' '.join(path)} {param.opts[0]}")
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None
            missing += _walk(sub, (*path, name))
    return missing


def test_every_command_and_option_has_help() -> None:
    """Plugin commands included: listing the group's commands registers them."""
    names = cli.list_commands(click.Context(cli))
    assert {"reminders", "users", "serve", "sync", "db"} <= set(names)
    assert _walk(cli, ()) == []


@pytest.mark.parametrize(
    ("args", "option", "valid"),
    [
        (["sync", "--type", "Observation"], "--type", "Condition, Encounter, Patient, Procedure"),
        (["reprocess", "--type", "Observation"], "--type", "Condition, Encounter, Patient, Procedure"),
        (["reprocess", "--cause", "nope"], "--cause", "valid: "),
        (["errors", "list", "--cause", "nope"], "--cause", "valid: "),
        (["reminders", "list", "--timepoint", "7y"], "--timepoint", "valid: 1y, 90d, baseline"),
        (["reminders", "list", "--status", "lost"], "--status", "'scheduled', 'sent', 'completed'"),
    ],
)
def test_options_with_fixed_values_are_checked(
    tmp_path: Path, args: list[str], option: str, valid: str
) -> None:
    cfg = write_config(tmp_path)
    if "--cause" in args:
        run("sync", config=cfg)
    result = CliRunner().invoke(cli, ["--config", str(cfg), *args])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output and valid in result.output, result.output
    if "--cause" in args:
        causes = json.loads(run("errors", "causes", "--json", config=cfg).stdout)
        assert all(c["cause_id"] in result.output for c in causes)


def test_config_and_db_after_the_command(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, migrate=False)
    other = tmp_path / "other.db"
    assert "database at revision" in run("db", "upgrade", "--config", str(cfg), "--db", f"sqlite:///{other}").stdout
    stats = run("stats", "--json", "--db", f"sqlite:///{other}", "--config", str(cfg))
    assert json.loads(stats.stdout)["staged"] == 0
    assert other.exists() and not (tmp_path / "registry.db").exists()
    nested = run("cases", "list", "--json", f"--config={cfg}", "--db", f"sqlite:///{other}")
    assert json.loads(nested.stdout) == []


def test_piped_output_is_whole_and_logs_stay_on_stderr(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, logging={"format": "json", "level": "INFO"})
    synced = run("sync", config=cfg, env={"COLUMNS": "40"})
    assert synced.stdout.startswith("sample: succeeded") and "sync.finish" in synced.stderr
    assert "sync.finish" not in synced.stdout  # logs never mix with results

    errors = json.loads(run("errors", "list", "--json", config=cfg).stdout)
    listed = run("errors", "list", config=cfg, env={"COLUMNS": "40"}).stdout.splitlines()
    assert listed[0].split("\t") == ["cause", "type", "id", "code", "field", "value", "message"]
    assert len(listed) == len(errors) + 1
    for line, error in zip(listed[1:], errors, strict=True):
        assert line.split("\t")[-1] == " ".join(error["message"].split())  # not cut to 40 columns

    cases = run("cases", "list", config=cfg, env={"COLUMNS": "40"}).stdout.splitlines()
    assert len(cases) == 41 and all(len(line.split("\t")) == 7 for line in cases)
    reminders = run("reminders", "list", config=cfg, env={"COLUMNS": "40"}).stdout.splitlines()
    assert reminders[0].split("\t")[:2] == ["procedure", "timepoint"]


def test_mappings_check_summary_goes_to_stdout(tmp_path: Path) -> None:
    """Problems are errors (stderr); the summary line is the command's result (stdout)."""
    from tests.registry_adapter.test_hl7_cli import site_mappings

    site = site_mappings(tmp_path)
    (site / "hl7v2" / "messages.yaml").write_text("versions: [\n")
    (tmp_path / "site").mkdir()
    cfg = write_config(tmp_path / "site", mappings={"directory": str(site)})
    proc = run("mappings", "check", config=cfg, check=False)
    assert proc.returncode == 1
    assert "messages.yaml: cannot read" in " ".join(proc.stderr.split())
    assert "problem(s); checked" in proc.stdout and "problem(s)" not in proc.stderr
