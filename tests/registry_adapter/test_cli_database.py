"""Commands against a database they cannot use: not migrated, unreachable, misconfigured.

Each gets one line naming the database (never the password) and exit code 2; only
``db upgrade`` changes the schema.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from registry_store import migrate
from registry_store.db import make_engine
from tests.conftest import PG_SERVER
from tests.registry_adapter.test_cli import run, write_config


def one_line_error(proc_stderr: str) -> str:
    lines = [line for line in proc_stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc_stderr
    assert "Traceback" not in proc_stderr
    return lines[0]


def test_an_unmigrated_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, migrate=False)
    head = migrate.head_revision(make_engine("sqlite://"))
    for command in (["stats"], ["sync"], ["cases", "list"], ["reminders", "plan"]):
        proc = run(*command, config=cfg, check=False)
        assert proc.returncode == 2, command
        assert one_line_error(proc.stderr).endswith(
            f"database is at revision none (empty database), the code needs {head}: "
            "run registry-adapter db upgrade"
        )
    with sqlite3.connect(tmp_path / "registry.db") as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone() == (0,)
    run("db", "upgrade", "--revision", "0001", config=cfg)
    older = run("stats", config=cfg, check=False)
    assert older.returncode == 2 and f"database is at revision 0001, the code needs {head}" in older.stderr
    run("db", "upgrade", config=cfg)
    assert run("stats", config=cfg).returncode == 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://alice:s3cret%40pw@127.0.0.1:{free}/registry",
         "cannot connect to database 'registry' on 127.0.0.1:{free} as user alice: Connection refused"),
        ("postgresql://nosuchrole:s3cret%40pw@127.0.0.1:5432/postgres",
         "cannot connect to database 'postgres' on 127.0.0.1:5432 as user nosuchrole: "
         'role "nosuchrole" does not exist'),
        ("postgresql://alice:s3cret@pw@127.0.0.1:notaport/registry", "the database URL is not valid"),
        ("postgresql+nodriver://alice:s3cret%40pw@127.0.0.1/registry",
         "no database driver for 'postgresql+nodriver'"),
        ("mysql+pymysql://alice:s3cret%40pw@127.0.0.1/registry",
         "no database driver for 'mysql+pymysql' (database 'registry' on 127.0.0.1:default port"),
    ],
)
@pytest.mark.postgres
def test_connection_problems_are_one_line_without_the_password(
    tmp_path: Path, url: str, expected: str
) -> None:
    assert PG_SERVER.startswith("postgresql://postgres@127.0.0.1:5432/")
    free = _free_port()
    cfg = write_config(tmp_path, migrate=False, database={"url": url.format(free=free)})
    for command in (["stats"], ["db", "upgrade"], ["db", "current"]):
        proc = run(*command, config=cfg, check=False)
        assert proc.returncode == 2, (command, proc.stderr)
        line = one_line_error(proc.stderr)
        assert line.startswith("database error: ") and expected.format(free=free) in line, line
        assert "s3cret" not in proc.stderr + proc.stdout
