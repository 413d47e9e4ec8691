"""The systemd unit and the container recipe in deploy/ and Dockerfile.

There is no Docker daemon on the test machines: the Dockerfile is checked for what can be
checked without one (every file it copies exists, it copies exactly the packages the wheel
ships, it runs as a non-root user, its health check and entry point are real commands).
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from registry_adapter.cli import cli
from tests.conftest import ROOT

UNIT = ROOT / "deploy" / "registry-adapter.service"
DOCKERFILE = ROOT / "Dockerfile"
INSTALLED_SCRIPT = "/opt/registry-adapter/bin/registry-adapter"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_confines_the_daemon() -> None:
    service = _unit()["Service"]
    assert service["User"] == "registry-adapter" and service["ExecStart"] == f"{INSTALLED_SCRIPT} run"
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    assert "/var/lib/registry-adapter" in service["ReadWritePaths"].split()
    assert service["StateDirectory"] == "registry-adapter"
    assert service["EnvironmentFile"] == "/etc/registry-adapter/secrets.env"
    assert service["Restart"] == "on-failure" and service["UMask"] == "0077"
    assert service["KillSignal"] == "SIGTERM"  # the daemon's clean stop (scheduler/daemon.py)


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    # The unit names the installed script; here the one of this environment stands in for it.
    unit = tmp_path / UNIT.name
    unit.write_text(
        UNIT.read_text().replace(INSTALLED_SCRIPT, str(Path(sys.executable).parent / "registry-adapter"))
    )
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify only warns (exit 0) on unknown keys: its output must be empty as well.
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), result.stderr


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_copies_real_files_and_exactly_the_shipped_packages() -> None:
    copies = [args for op, args in _instructions() if op == "COPY" and "--from=" not in args]
    sources = [src for args in copies for src in shlex.split(args)[:-1]]
    missing = [src for src in sources if not (ROOT / src).exists()]
    assert not missing
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert shipped <= set(sources)
    assert "README.md" in sources  # pyproject's readme, read by the build
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "var", "*.key", "config.yaml"} <= set(ignored)


def test_dockerfile_runs_a_real_command_as_a_non_root_user() -> None:
    steps = _instructions()
    ops = [op for op, _ in steps]
    last_user = max(i for i, op in enumerate(ops) if op == "USER")
    assert steps[last_user][1] not in ("root", "0") and last_user < ops.index("ENTRYPOINT")
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert re.search(r"useradd .*--uid 10001 .*registry-adapter", runs)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [script] = pyproject["project"]["scripts"]
    entry = shlex.split(dict(steps)["ENTRYPOINT"].strip("[]").replace(",", " "))
    assert entry == [script]
    health = dict(steps)["HEALTHCHECK"]
    command = re.search(r"CMD \[(.*)\]", health)
    assert command is not None
    args = [a.strip().strip('"') for a in command.group(1).split(",")]
    assert args[0] == script
    # The health check's command and options exist (its --help answers, unknown ones fail).
    assert CliRunner().invoke(cli, [*args[1:], "--help"]).exit_code == 0
    cmd = [a.strip().strip('"') for a in dict(steps)["CMD"].strip("[]").split(",")]
    assert CliRunner().invoke(cli, [*cmd, "--help"]).exit_code == 0
