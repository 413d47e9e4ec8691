"""A password-protected role on a PostgreSQL cluster that checks passwords (scram-sha-256).

The password holds ``%``, ``@`` and ``:``: the URL carries it %-encoded, the engine must keep
it (``str(URL)`` would mask it as ``***``) and Alembic's ConfigParser must not choke on the
``%`` of the encoding (nor print it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from registry_store import migrate
from registry_store.db import DatabaseUnavailable, make_engine, reported_unavailable
from tests.scram_cluster import ScramCluster, start_cluster

pytestmark = pytest.mark.postgres

PASSWORD = "p%25w@rd:x 100%"
ROLE = "registry_app"


@pytest.fixture(scope="module")
def scram() -> Iterator[ScramCluster]:
    yield from start_cluster()


@pytest.fixture(scope="module")
def role_url(scram: ScramCluster) -> str:
    with psycopg.connect(scram.superuser_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        conn.execute(f"CREATE DATABASE registry OWNER {ROLE}")
    return scram.url(ROLE, PASSWORD, "registry")


def test_engine_and_migrations_keep_the_password(role_url: str) -> None:
    engine = make_engine(role_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT current_user")).scalar_one() == ROLE
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision(engine)
    engine.dispose()


def test_a_wrong_password_is_reported_without_it(scram: ScramCluster) -> None:
    url = make_engine(scram.url(ROLE, "wrong%pass@word", "registry")).url
    with pytest.raises(DatabaseUnavailable) as raised, reported_unavailable(url):
        make_engine(url).connect()
    message = str(raised.value)
    assert f"'registry' on 127.0.0.1:{scram.port} as user {ROLE}" in message
    assert "password authentication failed" in message
    assert "wrong" not in message and "\n" not in message


def test_cli_with_the_password_from_env(role_url: str, scram: ScramCluster, tmp_path: Path) -> None:
    """The README's production form: ``postgresql://user:${PW}@host/db``."""
    from tests.registry_adapter.test_cli import run, write_config
    from tests.registry_adapter.test_cli_database import one_line_error

    encoded = role_url.split(":", 2)[2].split("@", 1)[0]
    cfg = write_config(
        tmp_path,
        migrate=False,
        database={"url": f"postgresql://{ROLE}:${{REGISTRY_DB_PASSWORD}}@127.0.0.1:{scram.port}/registry"},
    )
    env = {"REGISTRY_DB_PASSWORD": encoded}
    upgraded = run("db", "upgrade", config=cfg, env=env)
    assert "database at revision" in upgraded.stdout
    assert run("stats", "--json", config=cfg, env=env).returncode == 0
    assert PASSWORD not in upgraded.stdout + upgraded.stderr and encoded not in upgraded.stderr

    wrong = run("stats", config=cfg, env={"REGISTRY_DB_PASSWORD": "not%25it%40all%3A"}, check=False)
    assert wrong.returncode == 2
    line = one_line_error(wrong.stderr)
    assert f"database 'registry' on 127.0.0.1:{scram.port} as user {ROLE}" in line
    assert f'password authentication failed for user "{ROLE}"' in line
    assert "not%" not in wrong.stderr and "not%it@all" not in wrong.stderr


def test_cli_with_the_password_as_it_is(role_url: str, scram: ScramCluster, tmp_path: Path) -> None:
    """``database.password`` (or ``password_file``) takes the password unencoded."""
    from tests.registry_adapter.test_cli import run, write_config

    url = f"postgresql://{ROLE}@127.0.0.1:{scram.port}/registry"
    cfg = write_config(tmp_path, migrate=False, database={"url": url, "password": "${REGISTRY_DB_PASSWORD}"})
    env = {"REGISTRY_DB_PASSWORD": PASSWORD}
    assert "database at revision" in run("db", "upgrade", config=cfg, env=env).stdout
    assert run("stats", "--json", config=cfg, env=env).returncode == 0
    secret = tmp_path / "db-password"
    secret.write_text(PASSWORD + "\n")
    from_file = write_config(tmp_path, migrate=False, database={"url": url, "password_file": str(secret)})
    current = run("db", "current", config=from_file)
    assert "current " in current.stdout and PASSWORD not in current.stdout + current.stderr
