"""Shadow remap: what a mapping or code-map edit would change, before it lands.

Every staged record is mapped again with the edited copies (``views`` / ``codemaps`` folders)
by the real pipeline, on one database connection inside a transaction that is always rolled
back; the store is compared before and after, field by field. Nothing is written: the
pipeline's own transactions become savepoints of the outer one.

``registry-adapter mappings diff`` prints it; the review UI's add-code preview uses it with a
code-map copy holding the new code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.engine import Connection, Engine

from registry_adapter.app import App
from registry_store.db import make_engine
from registry_store.tables import CASES, MAPPING_ERRORS

# Bookkeeping columns: they change on every re-map and say nothing about the case.
_IGNORED_CASE_FIELDS = {"updated_at", "created_at"}


class _OneConnection:
    """An Engine stand-in for the pipeline: every ``connect()`` and ``begin()`` is the shadow
    connection; ``begin()`` is a savepoint, so the outer transaction can undo all of it."""

    def __init__(self, conn: Connection):
        self._conn = conn
        self.dialect = conn.dialect
        self.url = conn.engine.url
        self.name = conn.dialect.name

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        yield self._conn

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self._conn.begin_nested():
            yield self._conn

    def dispose(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn.engine, name)


def _savepoint_ready(engine: Engine) -> None:
    """SQLite through pysqlite needs SQLAlchemy's documented recipe for savepoints: the driver
    must not manage transactions itself, and BEGIN is emitted when SQLAlchemy begins one."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")


@contextmanager
def shadow_app(
    app: App, views: Path | None = None, codemaps: Path | None = None
) -> Iterator[tuple[App, Connection]]:
    """An App on the same store whose every write is rolled back, mapping with the given
    folders (None: the configured ones)."""
    mappings = app.settings.mappings.model_copy(
        update={
            **({"directory": views} if views is not None else {}),
            **({"codemaps": codemaps} if codemaps is not None else {}),
        }
    )
    # Mapped in this process: the shadow's one connection is the whole point (no worker pool).
    settings = app.settings.model_copy(update={"mappings": mappings, "mapping_workers": 1})
    engine = make_engine(app.engine.url)
    _savepoint_ready(engine)
    try:
        with engine.connect() as conn:
            outer = conn.begin()
            try:
                shadow = App(settings=settings, db_url=app.db_url)
                shadow.__dict__["engine"] = _OneConnection(conn)
                yield shadow, conn
            finally:
                outer.rollback()
    finally:
        engine.dispose()


def _plain(value: Any) -> Any:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return value


def _cases(conn: Connection) -> dict[str, dict[str, Any]]:
    return {
        r.id: {k: _plain(v) for k, v in r._mapping.items() if k not in _IGNORED_CASE_FIELDS}
        for r in conn.execute(select(CASES).where(CASES.c.status == "active"))
    }


def _open_errors(conn: Connection) -> dict[tuple[Any, ...], dict[str, Any]]:
    rows = conn.execute(
        select(
            MAPPING_ERRORS.c.staging_id,
            MAPPING_ERRORS.c.resource_type,
            MAPPING_ERRORS.c.resource_id,
            MAPPING_ERRORS.c.code,
            MAPPING_ERRORS.c.field,
            MAPPING_ERRORS.c.cause_id,
        ).where(MAPPING_ERRORS.c.status == "open")
    )
    return {(r.staging_id, r.code, r.field, r.cause_id): dict(r._mapping) for r in rows}


@dataclass
class RemapDiff:
    cases_created: list[dict[str, Any]] = field(default_factory=list)
    cases_removed: list[dict[str, Any]] = field(default_factory=list)
    cases_changed: list[dict[str, Any]] = field(default_factory=list)
    errors_cleared: list[dict[str, Any]] = field(default_factory=list)
    errors_added: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Counts first (the JSON keys the CLI promises), then the details under ``changes``."""
        return {
            "cases_created": len(self.cases_created),
            "cases_removed": len(self.cases_removed),
            "cases_changed": len(self.cases_changed),
            "errors_cleared": len(self.errors_cleared),
            "errors_added": len(self.errors_added),
            "changes": {
                "cases_created": self.cases_created,
                "cases_removed": self.cases_removed,
                "cases_changed": self.cases_changed,
                "errors_cleared": self.errors_cleared,
                "errors_added": self.errors_added,
            },
        }


def _case_summary(case: dict[str, Any]) -> dict[str, Any]:
    # Ids, codes and dates only: the same allow-list the masked review pages use.
    keys = ("id", "procedure_id", "patient_id", "module", "category", "surgery_date", "codes")
    return {k: case.get(k) for k in keys}


def compare(
    before_cases: dict[str, dict[str, Any]],
    after_cases: dict[str, dict[str, Any]],
    before_errors: dict[tuple[Any, ...], dict[str, Any]],
    after_errors: dict[tuple[Any, ...], dict[str, Any]],
) -> RemapDiff:
    diff = RemapDiff()
    for cid in sorted(after_cases.keys() - before_cases.keys()):
        diff.cases_created.append(_case_summary(after_cases[cid]))
    for cid in sorted(before_cases.keys() - after_cases.keys()):
        diff.cases_removed.append(_case_summary(before_cases[cid]))
    for cid in sorted(before_cases.keys() & after_cases.keys()):
        old, new = before_cases[cid], after_cases[cid]
        fields = {
            k: {"before": old.get(k), "after": new.get(k)} for k in sorted(old) if old.get(k) != new.get(k)
        }
        if fields:
            diff.cases_changed.append({"id": cid, "fields": fields})
    cleared = sorted(before_errors.keys() - after_errors.keys(), key=str)
    added = sorted(after_errors.keys() - before_errors.keys(), key=str)
    diff.errors_cleared = [before_errors[k] for k in cleared]
    diff.errors_added = [after_errors[k] for k in added]
    return diff


def shadow_remap(
    app: App,
    views: Path | None = None,
    codemaps: Path | None = None,
    *,
    cause_id: str | None = None,
) -> RemapDiff:
    """Map staged records with the edited folders and compare with the store; nothing is
    written. ``cause_id``: only that cause's records (the add-code preview), else every one."""
    from registry_adapter.pipeline import Pipeline

    with app.engine.connect() as conn:
        before_cases, before_errors = _cases(conn), _open_errors(conn)
    with shadow_app(app, views, codemaps) as (shadow, conn):
        Pipeline(shadow).reprocess(cause_id=cause_id, everything=cause_id is None)
        after_cases, after_errors = _cases(conn), _open_errors(conn)
    return compare(before_cases, after_cases, before_errors, after_errors)
