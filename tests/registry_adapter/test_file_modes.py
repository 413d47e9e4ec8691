"""Files holding patient data are owner-only, whatever the umask of the shell or cron job
that started the command."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import yaml

from registry_store.db import make_engine
from tests.conftest import base_config

SCRIPT = Path(sys.executable).parent / "registry-adapter"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_worklist_and_keys_are_created_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "config.yaml"
    cfg = base_config(tmp_path, database={"url": f"sqlite:///{data / 'registry.db'}"})
    cfg["site"] = {**cfg["site"], "pseudonym_key": None, "pseudonym_key_file": str(data / "pseudonym.key")}
    config.write_text(yaml.safe_dump(cfg))
    export = tmp_path / "exports" / "worklist.csv"
    export.parent.mkdir()
    for args in (["db", "upgrade"], ["sync"], ["reminders", "worklist", "--csv", str(export)]):
        run = subprocess.run(
            ["sh", "-c", 'umask 022 && exec "$@"', "sh", str(SCRIPT), "--config", str(config), *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr
    assert _mode(data) == 0o700
    created = [*data.iterdir(), export]
    assert {p.name for p in created} >= {"registry.db", "pseudonym.key", "worklist.csv"}
    assert {p.name: _mode(p) for p in created} == {p.name: 0o600 for p in created}


def test_the_store_is_owner_only_when_used_as_a_library(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        engine = make_engine(f"sqlite:///{tmp_path / 'new' / 'registry.db'}")
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x)")
        engine.dispose()
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new") == 0o700
    assert _mode(tmp_path / "new" / "registry.db") == 0o600
