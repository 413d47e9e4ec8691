"""The operator documentation: linked from the README, and what it tells operators to run
exists and works."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from registry_adapter.cli import cli
from tests.conftest import ROOT, base_config

DOCS = ROOT / "docs"


def test_readme_has_the_install_section_linking_the_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Install as a service", 1)[1].split("\n## ", 1)[0]
    assert "(docs/operations.md)" in section and "(docs/install.md)" in section


def test_operations_covers_backup_restore_rotation_upgrade_rollback() -> None:
    headings = re.findall(r"^## (.+)$", (DOCS / "operations.md").read_text(), re.M)
    assert headings == ["Backup", "Restore", "Secret rotation", "Upgrade", "Rollback"]


def _resolve(words: list[str]) -> click.Command | None:
    """The command ``registry-adapter WORDS...`` names, following groups; None if unknown."""
    ctx = click.Context(cli)
    command: click.Command = cli
    for word in words:
        if word.startswith("-") or not isinstance(command, click.Group):
            break
        found = command.get_command(ctx, word)
        if found is None:
            return None
        command = found
    return command


def test_every_documented_command_exists() -> None:
    text = "\n".join(p.read_text() for p in [*DOCS.glob("*.md"), ROOT / "README.md"])
    # The program at the start of a command: line start, inline code, after a path or &&.
    used = re.findall(r"(?:^|`|/bin/|&& )registry-adapter((?: [a-z][a-z-]*)+)", text, re.M)
    commands = {tuple(u.split()) for u in used}
    assert ("doctor",) in commands and ("db", "downgrade") in commands
    assert [c for c in commands if _resolve(list(c)) is None] == []
    for words in commands:
        assert CliRunner().invoke(cli, [*words, "--help"]).exit_code == 0, words


def test_documented_sqlite_backup_copies_a_live_store(tmp_path: Path) -> None:
    import yaml

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base_config(tmp_path)))
    runner = CliRunner()
    assert runner.invoke(cli, ["--config", str(config), "db", "upgrade"]).exit_code == 0
    assert runner.invoke(cli, ["--config", str(config), "sync"]).exit_code == 0
    ops = (DOCS / "operations.md").read_text()
    [snippet] = re.findall(r"python -c '([^']+)'", ops)
    source, copy = tmp_path / "registry.db", tmp_path / "backup.db"
    # Held open by another connection with its last writes still in the WAL, as under the daemon.
    live = sqlite3.connect(source)
    live.execute("PRAGMA journal_mode=WAL")
    live.execute("PRAGMA wal_autocheckpoint=0")
    live.execute("CREATE TABLE backup_probe (x)")
    live.execute("INSERT INTO backup_probe VALUES (1)")
    live.commit()
    assert Path(f"{source}-wal").stat().st_size > 0
    subprocess.run([sys.executable, "-c", snippet, str(source), str(copy)], check=True, timeout=60)
    live.close()
    backup = sqlite3.connect(copy)
    staged = backup.execute("SELECT count(*) FROM staging").fetchone()[0]
    assert (
        staged > 0 and staged == sqlite3.connect(source).execute("SELECT count(*) FROM staging").fetchone()[0]
    )
    assert backup.execute("SELECT x FROM backup_probe").fetchall() == [(1,)]
