"""The wheel, installed without extras into a fresh venv, is a working command line.

Built and installed the way a hospital would (``pip install spine-registry-adapter``); pip
resolves the dependencies through its configuration (here the local package index), so the
test works offline. Run from a folder outside the source tree, so nothing is imported from
the checkout by accident.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, SAMPLE_FEED

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(600)]

# The wheel's top-level import packages, as docs/install.md lists them (see "Package names").
TOP_LEVEL = {
    "adapters",
    "mappings",
    "registry_adapter",
    "registry_store",
    "registry_types",
    "review",
    "scheduler",
}


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(ROOT)], cwd=out)
    assert built.returncode == 0, built.stderr[-3000:]
    [whl] = out.glob("spine_registry_adapter-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    env_dir = tmp_path_factory.mktemp("venv")
    made = _run([sys.executable, "-m", "venv", str(env_dir)], cwd=env_dir)
    assert made.returncode == 0, made.stderr
    installed = _run([str(env_dir / "bin/pip"), "install", "--quiet", str(wheel)], cwd=env_dir)
    assert installed.returncode == 0, installed.stderr[-3000:]
    yield env_dir


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder outside the checkout with a config file, as an operator would have."""
    (tmp_path / "etc").mkdir()
    config = {
        "site": {"id": "pkg-site", "timezone": "America/Chicago", "pseudonym_key_file": "pseudonym.key"},
        "database": {"url": "sqlite:///data/registry.db"},
        "logging": {"format": "json", "level": "WARNING"},
        "sources": [{"name": "sample", "type": "files", "path": str(SAMPLE_FEED)}],
    }
    (tmp_path / "etc" / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "cwd").mkdir()
    return tmp_path


def _cli(venv: Path, workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A shell's usual umask: the files must be private because of the program, not the shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["REGISTRY_ADAPTER_CONFIG"] = str(workdir / "etc" / "config.yaml")
    command = f"umask 022 && exec {venv / 'bin/registry-adapter'} " + " ".join(args)
    return _run(["sh", "-c", command], cwd=workdir / "cwd", env=env)


def test_wheel_holds_the_documented_packages_and_no_test_only_dependency(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/")[0] for name in zf.namelist() if not name.split("/")[0].endswith(".dist-info")}
        [metadata] = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [
            line for line in zf.read(metadata).decode().splitlines() if line.startswith("Requires-Dist:")
        ]
    assert tops == TOP_LEVEL
    docs = (ROOT / "docs" / "install.md").read_text()
    assert all(f"`{name}`" in docs for name in TOP_LEVEL)
    core = [r for r in requires if "extra ==" not in r]
    assert not any("fhirpathpy" in r for r in core)
    assert any("fhirpathpy" in r and 'extra == "test"' in r for r in requires)


def test_installed_without_extras_the_cli_works_from_another_directory(venv: Path, workdir: Path) -> None:
    assert _run([str(venv / "bin/pip"), "check"], cwd=workdir).returncode == 0
    helped = _cli(venv, workdir, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "sync" in helped.stdout and "doctor" in helped.stdout and "serve" in helped.stdout

    upgraded = _cli(venv, workdir, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "database at revision" in upgraded.stdout
    synced = _cli(venv, workdir, "sync", "--json")
    # The sample feed holds records that fail mapping on purpose; the run itself succeeds.
    assert synced.returncode == 0, synced.stderr
    assert '"outcome": "succeeded"' in synced.stdout

    # Nothing lands in the current directory; patient data and keys are owner-only.
    assert list((workdir / "cwd").iterdir()) == []
    data = workdir / "etc" / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for path in [*data.iterdir(), workdir / "etc" / "pseudonym.key"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_installed_without_extras_the_web_ui_names_its_extra(venv: Path, workdir: Path) -> None:
    served = _cli(venv, workdir, "serve")
    assert served.returncode == 1
    lines = served.stderr.strip().splitlines()
    assert lines == [
        "Error: `registry-adapter serve` needs the 'web' extra: pip install 'spine-registry-adapter[web]'"
    ]
    # The daemon looks at the UI's service module whether or not the UI is enabled.
    probe = _run([str(venv / "bin/python"), "-c", "import review.service, scheduler.daemon"], cwd=workdir)
    assert probe.returncode == 0, probe.stderr
    # fhirpathpy is a test/bench dependency only.
    probe = _run([str(venv / "bin/python"), "-c", "import fhirpathpy"], cwd=workdir)
    assert probe.returncode != 0 and "No module named 'fhirpathpy'" in probe.stderr


def test_installed_without_extras_an_enabled_ui_stops_the_daemon_with_one_line(
    venv: Path, workdir: Path
) -> None:
    config = workdir / "etc" / "config.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "review": {"enabled": True}}))
    assert _cli(venv, workdir, "db", "upgrade").returncode == 0
    ran = _cli(venv, workdir, "run")
    assert ran.returncode == 1
    assert ran.stderr.strip().splitlines()[-1] == (
        "Error: the review web UI (review.enabled: true) needs the 'web' extra: "
        "pip install 'spine-registry-adapter[web]'"
    )


def _stand_in_wheel(name: str, out: Path) -> Path:
    """A distribution shipping a top-level package ``name``, as the PyPI project of that name
    does (``adapters``: AdapterHub; ``scheduler``); those are not in the local index."""
    src = out / f"src-{name}"
    (src / name).mkdir(parents=True)
    (src / name / "__init__.py").write_text(f'"""Stand-in for the PyPI project {name}."""\n')
    (src / "pyproject.toml").write_text(
        f'[project]\nname = "{name}"\nversion = "9.9"\n[tool.setuptools]\npackages = ["{name}"]\n'
    )
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(src)], cwd=out)
    assert built.returncode == 0, built.stderr[-3000:]
    [whl] = out.glob(f"{name}-9.9-*.whl")
    return whl


def test_doctor_reports_pypi_projects_sharing_our_package_names(wheel: Path, tmp_path: Path) -> None:
    # A shared environment: the adapter, then PyPI's `adapters` and `scheduler` beside it.
    shared = tmp_path / "shared"
    assert _run([sys.executable, "-m", "venv", str(shared)], cwd=tmp_path).returncode == 0
    others = [_stand_in_wheel(name, tmp_path) for name in ("adapters", "scheduler")]
    for whl in (wheel, *others):
        installed = _run([str(shared / "bin/pip"), "install", "--quiet", str(whl)], cwd=tmp_path)
        assert installed.returncode == 0, installed.stderr[-3000:]
    (tmp_path / "cwd").mkdir()
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "config.yaml").write_text("site: {}\n")
    doctor = _cli(shared, tmp_path, "doctor", "--json")
    [installation] = [r for r in json.loads(doctor.stdout) if r["check"] == "installation"]
    assert installation["status"] == "fail"
    assert "`adapters` also from adapters" in installation["detail"]
    assert "`scheduler` also from scheduler" in installation["detail"]
    assert "virtual environment of its own" in installation["fix"]
