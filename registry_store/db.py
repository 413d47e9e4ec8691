"""Engine creation and the few bulk-write primitives the pipeline needs.

SQLModel declares the schema; hot paths write through SQLAlchemy Core with dialect-native
``INSERT ... ON CONFLICT`` because ORM ``merge()`` per row is ~50x slower (see
shared/reference/libraries.md, section 3.4).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Engine,
    Select,
    Table,
    any_,
    bindparam,
    create_engine,
    event,
    func,
    literal_column,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect, Result, Row
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


def commit_unflushed(conn: Connection) -> None:
    """Let the commit of ``conn``'s transaction return before its WAL reaches the disk
    (PostgreSQL ``synchronous_commit = off``, for this transaction only; ~5 ms a commit).

    Only for work that is redone if a crash loses it (staging between checkpoints, mapping
    batches: their records stay pending). A lost commit is lost whole, never in part, and
    any later ordinary commit (a checkpoint, the end of a run) flushes it first, so what a
    run checkpoints or reports is on disk. SQLite (WAL, ``synchronous=NORMAL``) commits so
    already."""
    if is_postgres(conn):
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")


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
    cols = update if update is not None else [c for c in rows[0] if c not in keys]
    if not returning:
        plan = _plan(conn, tbl, tuple(rows[0]), tuple(keys), tuple(cols))
        if plan is not None:
            plan.run(conn, rows)
            return None
    dialect = postgresql if is_postgres(conn) else sqlite
    stmt = dialect.insert(tbl)
    if cols:
        stmt = stmt.on_conflict_do_update(index_elements=list(keys), set_={c: stmt.excluded[c] for c in cols})
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(keys))
    if returning:
        return conn.execute(stmt.returning(*returning), list(rows))
    conn.execute(stmt, list(rows))
    return None


def update_rows(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    where: Sequence[str],
    values: Sequence[str],
) -> None:
    """Set the ``values`` columns of each row of ``table`` whose ``where`` columns equal those
    of one of ``rows`` (dicts by column name) to that row's; a row given twice: the last wins."""
    if not rows:
        return
    dialect = conn.dialect
    quote = dialect.identifier_preparer.quote
    name = dialect.identifier_preparer.format_table(table)
    columns = [table.c[c] for c in (*values, *where)]
    if is_postgres(conn):
        last = {tuple(r[c] for c in where): r for r in rows}
        rows = list(last.values())
        casts = ", ".join(f"%b::{c.type.compile(dialect=dialect)}[]" for c in columns)
        names = ", ".join(quote(c.name) for c in columns)
        sql = (
            f"UPDATE {name} SET {', '.join(f'{quote(c)} = u.{quote(c)}' for c in values)}"
            f" FROM unnest({casts}) AS u({names})"
            f" WHERE {' AND '.join(f'{name}.{quote(c)} = u.{quote(c)}' for c in where)}"
        )
    else:
        sql = (
            f"UPDATE {name} SET {', '.join(f'{quote(c)} = ?' for c in values)}"
            f" WHERE {' AND '.join(f'{quote(c)} = ?' for c in where)}"
        )
    processors = [c.type._cached_bind_processor(dialect) for c in columns]
    processed = _columns(rows, [c.key for c in columns], processors)
    if is_postgres(conn):
        conn.exec_driver_sql(sql, tuple(processed))
    else:
        params = list(zip(*processed, strict=True))
        conn.exec_driver_sql(sql, params if len(params) > 1 else params[0])


def one_of(column: ColumnElement[Any], values: Collection[Any], dialect: Dialect) -> ColumnElement[bool]:
    """``column IN values`` as a statement whose text does not depend on how many there are:
    one bound parameter (a PostgreSQL array; on SQLite a JSON list read by ``json_each``), so
    it is compiled, parsed and prepared once, not once per list length (a 900-value IN list
    costs psycopg ~4 ms to parse, every time). Strings and integers only."""
    items = list(values)
    if dialect.name == "postgresql":
        return column == any_(bindparam(None, items, type_=ARRAY(column.type)))
    listed = func.json_each(bindparam(None, _json_list(items)))
    return column.in_(select(literal_column("value")).select_from(listed))


def lookup(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    where: Mapping[str, Any],
    key: str,
    values: Collection[Any],
) -> list[Row[Any]]:
    """``columns`` (as the driver returns them: plain strings and numbers only) of the rows of
    ``table`` matching ``where`` whose ``key`` is one of ``values``, probing ``key``'s index
    once per value.

    On PostgreSQL ``key = ANY(array)`` is left to the planner, which, before the table's first
    ANALYZE (the first import), scans every row matching ``where`` per batch instead; a
    lateral join of the values probes the index whatever the statistics say."""
    wanted = list(dict.fromkeys(values))
    if not wanted:
        return []
    dialect = conn.dialect
    quote = dialect.identifier_preparer.quote
    name = dialect.identifier_preparer.format_table(table)
    listed = ", ".join(quote(table.c[c].name) for c in columns)
    column = quote(table.c[key].name)
    if is_postgres(conn):
        cond = " AND ".join([*(f"{quote(table.c[c].name)} = %s" for c in where), f"{column} = u.k"])
        sql = (
            f"SELECT t.* FROM unnest(%b::{table.c[key].type.compile(dialect=dialect)}[]) AS u(k)"
            f" CROSS JOIN LATERAL (SELECT {listed} FROM {name} WHERE {cond}) AS t"
        )
        return list(conn.exec_driver_sql(sql, (wanted, *where.values())))
    listed_in = f"{column} IN (SELECT value FROM json_each(?))"
    cond = " AND ".join([*(f"{quote(table.c[c].name)} = ?" for c in where), listed_in])
    sql = f"SELECT {listed} FROM {name} WHERE {cond}"
    return list(conn.exec_driver_sql(sql, (*where.values(), _json_list(wanted))))


def keyset_chunks(
    conn: Connection, query: Select[Any], key: ColumnElement[Any], per_chunk: int
) -> Iterator[list[Any]]:
    """The values of ``query`` (which selects ``key``), ``per_chunk`` at a time in ``key``
    order: each chunk is read after the last value of the one before (keyset pagination), so
    a chunk costs an index range, never an OFFSET scan, and memory stays one chunk's."""
    after: Any = None
    while True:
        page = query.order_by(key).limit(per_chunk)
        if after is not None:
            page = page.where(key > after)
        values = list(conn.execute(page).scalars())
        if not values:
            return
        after = values[-1]
        yield values


def _json_list(items: list[Any]) -> str:
    return orjson.dumps(items).decode()


def insert_new(conn: Connection, table: Table, rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> int:
    """Insert the ``rows`` whose ``keys`` are not taken yet (``ON CONFLICT DO NOTHING``);
    returns how many landed."""
    if not rows:
        return 0
    plan = _plan(conn, table, tuple(rows[0]), tuple(keys), ())
    if plan is not None:
        return plan.run(conn, rows)
    result = upsert(conn, table, rows, keys, update=[], returning=[table.c[k] for k in keys])
    assert result is not None
    return len(result.all())


# Bulk writes skip SQLAlchemy's statement machinery: an executemany through ``conn.execute``
# compiles parameters row by row (``construct_params`` and every bind processor per value:
# ~1/3 of an import's database time). A plan is the statement's SQL, made once per table and
# column list, and the bind processors of its columns, applied here with a memo per value
# object (one ``now`` stamps a whole batch). SQLite runs it as one ``executemany`` of plain
# tuples; PostgreSQL as one ``INSERT ... SELECT FROM unnest(<one array per column>)``, a
# short statement psycopg parses and prepares once (a multi-row VALUES list is re-parsed on
# every call, and executemany pays a protocol round of Python per row).
_PLANS: dict[tuple[str, str, tuple[str, ...], tuple[str, ...], tuple[str, ...]], _Plan | None] = {}
_UNNEST_CHUNK = 5000


class _Plan:
    def __init__(self, sql: str, names: tuple[str, ...], constants: tuple[Any, ...],
                 processors: tuple[Callable[[Any], Any] | None, ...], keys: tuple[str, ...],
                 update: tuple[str, ...], arrays: bool):
        self.sql, self.names, self.constants, self.processors = sql, names, constants, processors
        self.keys, self.update, self.arrays = keys, update, arrays

    def _values(self, rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
        return _columns(rows, self.names, self.processors)

    def run(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
        """Write ``rows``; returns how many were inserted or updated."""
        if self.arrays:
            return self._run_unnest(conn, rows)
        columns = self._values(rows)
        if self.constants:
            columns += [[c] * len(rows) for c in self.constants]
        params = list(zip(*columns, strict=True))
        result = conn.exec_driver_sql(self.sql, params if len(params) > 1 else params[0])
        return int(result.rowcount or 0)

    def _run_unnest(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
        # One statement must not touch a row twice (PostgreSQL refuses it for DO UPDATE): a
        # key given again keeps its first row's place and other values and takes the later
        # row's updated columns, which is what writing the rows one by one leaves.
        merged: dict[tuple[Any, ...], Mapping[str, Any]] = {}
        for row in rows:
            key = tuple(row[k] for k in self.keys)
            first = merged.get(key)
            if first is None:
                merged[key] = row
            elif self.update:
                merged[key] = {**first, **{c: row[c] for c in self.update}}
        unique = list(merged.values()) if len(merged) < len(rows) else rows
        total = 0
        for start in range(0, len(unique), _UNNEST_CHUNK):
            chunk = unique[start : start + _UNNEST_CHUNK]
            columns = self._values(chunk)
            columns += [[c] * len(chunk) for c in self.constants]
            result = conn.exec_driver_sql(self.sql, tuple(columns))
            total += int(result.rowcount or 0)
        return total


_Processor = Callable[[Any], Any] | None


def _columns(
    rows: Sequence[Mapping[str, Any]], names: Sequence[str], processors: Sequence[_Processor]
) -> list[list[Any]]:
    """The values of each column (``names`` order), processed for the driver."""
    columns: list[list[Any]] = []
    for name, proc in zip(names, processors, strict=True):
        values = [row[name] for row in rows]
        if proc is not None:
            # By object (``rows`` keeps every value alive meanwhile), and empty JSON
            # lists and objects, each a new object, by their type.
            memo: dict[Any, Any] = {}
            out = []
            for value in values:
                key = id(value) if value or type(value) not in (list, dict) else type(value)
                if key in memo:
                    out.append(memo[key])
                else:
                    out.append(memo.setdefault(key, proc(value)))
            values = out
        columns.append(values)
    return columns


def _plan(
    conn: Connection, tbl: Table, names: tuple[str, ...], keys: tuple[str, ...], update: tuple[str, ...]
) -> _Plan | None:
    """The plan writing ``names`` of ``tbl`` (None: not one this fast path covers, e.g. a
    column default that must be called per row)."""
    dialect = conn.dialect
    cache_key = (dialect.name, tbl.fullname, names, keys, update)
    if cache_key in _PLANS:
        return _PLANS[cache_key]
    plan = None
    if dialect.name in ("sqlite", "postgresql") and all(n in tbl.c for n in names):
        constants: dict[str, Any] = {}
        simple = True
        for col in tbl.c:
            if col.onupdate is not None:
                simple = False
            elif col.key not in names and col.default is not None:
                if col.default.is_scalar:
                    constants[col.key] = col.default.arg  # type: ignore[attr-defined]
                else:
                    simple = False
        if simple:
            plan = _make_plan(dialect, tbl, names, constants, keys, update)
    _PLANS[cache_key] = plan
    return plan


def _make_plan(dialect: Dialect, tbl: Table, names: tuple[str, ...], constants: dict[str, Any],
               keys: tuple[str, ...], update: tuple[str, ...]) -> _Plan:
    quote = dialect.identifier_preparer.quote
    columns = [tbl.c[n] for n in (*names, *constants)]
    target = ", ".join(quote(c.name) for c in columns)
    conflict = f" ON CONFLICT ({', '.join(quote(tbl.c[k].name) for k in keys)}) DO "
    if update:
        conflict += "UPDATE SET " + ", ".join(f"{quote(tbl.c[c].name)} = excluded.{quote(tbl.c[c].name)}"
                                              for c in update)
    else:
        conflict += "NOTHING"
    table_name = dialect.identifier_preparer.format_table(tbl)
    arrays = dialect.name == "postgresql"
    if arrays:
        casts = ", ".join(f"%b::{c.type.compile(dialect=dialect)}[]" for c in columns)
        sql = f"INSERT INTO {table_name} ({target}) SELECT * FROM unnest({casts}){conflict}"
    else:
        sql = f"INSERT INTO {table_name} ({target}) VALUES ({', '.join('?' for _ in columns)}){conflict}"
    processors = tuple(tbl.c[n].type._cached_bind_processor(dialect) for n in names)
    consts = tuple(_processed(tbl.c[n].type._cached_bind_processor(dialect), v) for n, v in constants.items())
    return _Plan(sql, names, consts, processors, keys, update, arrays)


def _processed(proc: Callable[[Any], Any] | None, value: Any) -> Any:
    return proc(value) if proc is not None else value
