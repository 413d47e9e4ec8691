"""A private PostgreSQL cluster that requires scram-sha-256 passwords, for password tests.

The shared server on 127.0.0.1:5432 trusts local connections, so a wrong or mangled password
would still get in there; this cluster checks it. Started with ``initdb``/``pg_ctl`` in a
temporary folder on a free port (as the ``postgres`` user when the tests run as root, since
PostgreSQL refuses to run as root) and stopped at the end of the session.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

SUPERUSER_PASSWORD = "super-secret-for-tests"


@dataclass
class ScramCluster:
    port: int

    def url(self, user: str, password: str, database: str) -> str:
        """A URL as an operator writes it: the password %-encoded (``@`` → ``%40``)."""
        return f"postgresql://{user}:{quote(password, safe='')}@127.0.0.1:{self.port}/{database}"

    def superuser_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def start_cluster() -> Iterator[ScramCluster]:
    """Start the cluster in a fresh folder of its own (pytest's tmp folders are private to
    root, so the postgres user could not enter them)."""
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        pytest.skip("initdb/pg_ctl not installed: cannot start a PostgreSQL cluster with scram auth")
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres user: PostgreSQL will not start as root")
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL as postgres")
    tmp = Path(tempfile.mkdtemp(prefix="registry-scram-"))
    tmp.chmod(0o755)
    data, pwfile = tmp / "data", tmp / "pw"
    pwfile.write_text(SUPERUSER_PASSWORD + "\n")
    if os.geteuid() == 0:
        for path in (tmp, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = _free_port()
    _run(
        _as_postgres_user(
            ["initdb", "-D", str(data), "-U", "postgres", f"--pwfile={pwfile}", "--auth=scram-sha-256"]
        ),
    )
    _run(
        _as_postgres_user(
            [
                "pg_ctl", "-D", str(data), "-l", str(tmp / "log"), "-w", "start",
                "-o", f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1",
            ]
        )
    )
    try:
        yield ScramCluster(port)
    finally:
        subprocess.run(
            _as_postgres_user(["pg_ctl", "-D", str(data), "-m", "immediate", "stop"]), capture_output=True
        )
        shutil.rmtree(tmp, ignore_errors=True)


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        pytest.fail(f"{cmd[0] if cmd[0] != 'runuser' else cmd[4]} failed: {done.stderr or done.stdout}")
