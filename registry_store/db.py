"""Engine creation and the few bulk-write primitives the pipeline needs.

SQLModel declares the schema; hot paths write through SQLAlchemy Core with dialect-native
``INSERT ... ON CONFLICT`` because ORM ``merge()`` per row is ~50x slower (see
shared/reference/libraries.md, section 3.4).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Result
from sqlalchemy.engine.url import make_url
from sqlmodel import SQLModel


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout so readers never block sync.

    ``hide_parameters``: a failed statement's error must not quote the values it tried to
    bind, which are patient data; errors end up in logs and in sync_runs.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            # The store holds patient data: owner-only whatever the umask (SQLite gives its
            # -wal/-shm files the mode of the database file).
            path = Path(parsed.database).expanduser()
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

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
        url = str(parsed.set(drivername="postgresql+psycopg"))
    return create_engine(url, pool_pre_ping=True, hide_parameters=True)


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
