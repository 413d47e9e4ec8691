"""Engine creation and the few bulk-write primitives the pipeline needs.

SQLModel declares the schema; hot paths write through SQLAlchemy Core with dialect-native
``INSERT ... ON CONFLICT`` because ORM ``merge()`` per row is ~50x slower (see
shared/reference/libraries.md, section 3.4).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Result
from sqlalchemy.engine.url import URL, make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, NoSuchModuleError, OperationalError
from sqlmodel import SQLModel


class DatabaseUnavailable(Exception):
    """The configured database cannot be used: a bad URL, a missing driver, a refused
    connection or an unknown role. The message names host, port and database, never the
    password, so it can be printed and logged as it is."""


def describe(url: URL) -> str:
    """Where ``url`` points, for messages: host, port, database and user, never the password."""
    if url.get_backend_name() == "sqlite":
        return f"SQLite database {url.database or ':memory:'}"
    port = url.port or (5432 if url.get_backend_name() == "postgresql" else "default port")
    user = f" as user {url.username}" if url.username else ""
    return f"database {url.database!r} on {url.host or 'localhost'}:{port}{user}"


def parse_url(url: str | URL) -> URL:
    """``url`` as a URL object; a malformed one is reported without echoing it (it may hold
    the password)."""
    if isinstance(url, URL):
        return url
    try:
        return make_url(url)
    except (ArgumentError, ValueError):
        raise DatabaseUnavailable(
            "the database URL is not valid (expected e.g. postgresql://user:password@host:5432/db "
            "or sqlite:///path/registry.db; special characters in the password must be %-encoded)"
        ) from None


@contextmanager
def reported_unavailable(url: URL) -> Iterator[None]:
    """Turn a failed connection into :class:`DatabaseUnavailable` naming where it went.

    Only the driver's reason is kept ("Connection refused", "password authentication failed
    for user ..."): the place is said once, by :func:`describe`, and hints below it are noise.
    """
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        first = str(exc.orig or exc).strip().splitlines()[0]
        # psycopg: 'connection failed: connection to server at "h", port p failed: FATAL:  why'
        reason = first.rsplit(" failed: ", 1)[-1].removeprefix("FATAL:").strip()
        if url.password:
            reason = reason.replace(str(url.password), "***")
        raise DatabaseUnavailable(f"cannot connect to {describe(url)}: {reason}") from None


def make_engine(url: str | URL) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout so readers never block sync.

    ``url`` stays a URL object throughout: ``str(URL)`` masks the password as ``***``, so a
    string round trip would lose it.

    ``hide_parameters``: a failed statement's error must not quote the values it tried to
    bind, which are patient data; errors end up in logs and in sync_runs.
    """
    parsed = parse_url(url)
    try:
        return _create(parsed)
    except (NoSuchModuleError, ImportError) as exc:
        raise DatabaseUnavailable(
            f"no database driver for {parsed.drivername!r} ({describe(parsed)}): {exc}"
        ) from None


def _create(parsed: URL) -> Engine:
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            # The store holds patient data: owner-only whatever the umask (SQLite gives its
            # -wal/-shm files the mode of the database file).
            path = Path(parsed.database).expanduser()
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        engine = create_engine(parsed, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode is durable against process crashes; FULL adds power-loss
            # safety for the MLLP listener, which sets it on its own connection.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        # Plain postgresql:// means psycopg 3 here, the driver we ship.
        parsed = parsed.set(drivername="postgresql+psycopg")
    engine = create_engine(parsed, pool_pre_ping=True, hide_parameters=True)
    if parsed.get_backend_name() == "postgresql":

        @event.listens_for(engine, "connect")
        def _custom_plans(dbapi_conn: Any, _record: Any) -> None:
            # psycopg prepares a statement on the server once it has run 5 times, and PostgreSQL
            # then tends to a generic plan; for ``key = $1 AND id IN ($2, …, $901)`` that plan
            # scans every row of the key and filters the list (seen: 2.3 s instead of 60 ms per
            # staging lookup at 200,000 records, quadratic in the store). Plan with the values.
            cur = dbapi_conn.cursor()
            cur.execute("SET plan_cache_mode = force_custom_plan")
            cur.close()
            dbapi_conn.commit()  # a SET rolled back with its transaction would not stay

    return engine


def is_postgres(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "postgresql"


def upsert(
    conn: Connection,
    table: Table | type[SQLModel],
    rows: Sequence[dict[str, Any]],
    keys: Sequence[str],
    update: Sequence[str] | None = None,
    returning: Sequence[Any] = (),
) -> Result[Any] | None:
    """Insert ``rows`` or update the existing rows with the same ``keys`` (``update=[]``: leave
    them). With ``returning`` columns, the result names the rows written (not those left)."""
    if not rows:
        return None
    tbl: Table = table if isinstance(table, Table) else table.__table__  # type: ignore[attr-defined]
    dialect = postgresql if is_postgres(conn) else sqlite
    stmt = dialect.insert(tbl)
    cols = update if update is not None else [c for c in rows[0] if c not in keys]
    if cols:
        stmt = stmt.on_conflict_do_update(index_elements=list(keys), set_={c: stmt.excluded[c] for c in cols})
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(keys))
    if returning:
        return conn.execute(stmt.returning(*returning), list(rows))
    conn.execute(stmt, list(rows))
    return None
