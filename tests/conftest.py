"""Shared fixtures: real SQLite files and real PostgreSQL databases, settings, a built App.

PostgreSQL runs on 127.0.0.1:5432 on this machine kind (``make test`` starts it when it is
installed and down). Each test session gets its own throwaway database, dropped at the end.
Set REGISTRY_TEST_POSTGRES_URL to point elsewhere (a server URL whose user may create databases).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from sqlalchemy import text

from registry_adapter.app import App, build_app
from registry_adapter.config import parse_settings

if TYPE_CHECKING:
    from tests.scheduler.conftest import SmtpSink

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_FEED = ROOT / "examples" / "sample-feed"
# Third-party conformance data and sample messages, vendored with their licences.
FIXTURES = ROOT / "tests" / "fixtures"

pytest_plugins = ["tests.fhir_server.fixture"] if (ROOT / "tests/fhir_server/fixture.py").exists() else []

PG_SERVER = os.environ.get("REGISTRY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def base_config(tmp: Path, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "site": {"id": "test-site", "timezone": "America/Chicago", "pseudonym_key": "test-key-not-secret"},
        "database": {"url": f"sqlite:///{tmp / 'registry.db'}"},
        "logging": {"format": "json", "level": "WARNING"},
        "sources": [{"name": "sample", "type": "files", "path": str(SAMPLE_FEED)}],
        # Settings built without a config file have no folder to keep a generated key beside.
        "review": {"session_key_file": str(tmp / "review-session.key")},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def write_config_file(tmp: Path, *, migrate: bool = True, **overrides: Any) -> Path:
    """``tmp/config.yaml`` from :func:`base_config`; with ``migrate`` its database is brought
    to the current schema first, as an operator runs ``db upgrade`` before anything else
    (commands refuse an unmigrated database)."""
    import yaml

    data = base_config(tmp, **overrides)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    if migrate:
        app = build_app(parse_settings(data))
        app.upgrade_db()
        app.engine.dispose()
    return path


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    try:
        psycopg.connect(PG_SERVER, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_SERVER} ({exc}); run `make services`")
    yield PG_SERVER


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    name = f"registry_test_{secrets.token_hex(4)}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = pg_server.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run the test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., App]]:
    """Build an App on a migrated database; keyword arguments override config keys."""
    built: list[App] = []

    def factory(db_url: str | None = None, **overrides: Any) -> App:
        settings = parse_settings(base_config(tmp_path, **overrides))
        app = build_app(settings, db_url)
        app.upgrade_db()
        built.append(app)
        return app

    yield factory
    for app in built:
        app.engine.dispose()


@pytest.fixture
def app(make_app: Callable[..., App], db_url: str) -> App:
    return make_app(db_url)


@pytest.fixture
def sqlite_app(make_app: Callable[..., App]) -> App:
    return make_app()


@pytest.fixture
def feed_copy(tmp_path: Path) -> Path:
    """A writable copy of the bundled sample feed."""
    dest = tmp_path / "feed"
    shutil.copytree(SAMPLE_FEED, dest)
    return dest


def table_count(app: App, table: str, where: str = "") -> int:
    with app.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table} {where}")).scalar_one())


@pytest.fixture
def smtp_server() -> Iterator[SmtpSink]:
    """A real SMTP server (aiosmtpd) on a free loopback port, recording what it receives."""
    from aiosmtpd.controller import Controller

    from tests.scheduler.conftest import SmtpSink, free_port

    sink = SmtpSink("127.0.0.1", free_port())
    controller = Controller(sink, hostname=sink.host, port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()
