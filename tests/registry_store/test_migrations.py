"""Migrations on SQLite and PostgreSQL: up, down, up again, and models match the schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

import registry_store.models  # noqa: F401
from registry_store import migrate
from registry_store.db import make_engine


def test_upgrade_downgrade_upgrade_and_no_drift(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision(engine)
    tables = set(inspect(engine).get_table_names())
    assert {"staging", "cases", "mapping_errors", "sync_runs", "reminders", "users"} <= tables
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == [], f"models and migrations differ: {diff}"
    migrate.downgrade(engine, "base")
    assert "staging" not in inspect(engine).get_table_names()
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision(engine)
    engine.dispose()


def test_data_migrations_carry_existing_rows(db_url: str) -> None:
    """0002 moves the severity out of ``rule``; 0003 re-hashes staged v2 messages the new way."""
    import hashlib

    from sqlalchemy import text

    from adapters.hl7v2.header import message_digest

    engine = make_engine(db_url)
    migrate.upgrade(engine, "0001")
    raw = b"MSH|^~\\&|APP|FAC|REG|REG|20260101120000||ADT^A01|C1|P|2.5\rPID|1||X1\r"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO staging (source, resource_type, resource_id, content_type, content_hash, raw,"
                " origin, status, received_at, updated_at) VALUES ('mllp', 'HL7v2', 'FAC|C1',"
                " 'application/hl7-v2', :h, :raw, '', 'mapped', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ),
            {"h": hashlib.sha256(raw).hexdigest(), "raw": raw},
        )
        for code, rule in (("a.warn", "warning"), ("a.err", "")):
            conn.execute(
                text(
                    "INSERT INTO mapping_errors (staging_id, source, resource_type, resource_id, mapping,"
                    " field, rule, code, message, cause_id, status, first_seen, last_seen) VALUES"
                    " (1, 's', 'Procedure', 'p1', 'm', 'f', :rule, :code, 'msg', 'c', 'open',"
                    " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"rule": rule, "code": code},
            )
    migrate.upgrade(engine)
    with engine.connect() as conn:
        errors = dict(conn.execute(text("SELECT code, severity || '/' || rule FROM mapping_errors")).all())
        digest = conn.execute(text("SELECT content_hash FROM staging")).scalar_one()
    assert errors == {"a.warn": "warning/", "a.err": "error/"}
    assert digest == message_digest(raw) != hashlib.sha256(raw).hexdigest()
    migrate.downgrade(engine, "base")
    engine.dispose()


def test_schema_check_reads_the_head_the_files_declare(db_url: str) -> None:
    """``require_current`` settles "at head" from the files' declared revisions without
    Alembic; that reading must agree with Alembic's, and anything else still goes to it."""
    engine = make_engine(db_url)
    assert migrate.declared_head() == migrate.head_revision(engine)
    migrate.upgrade(engine)
    migrate.require_current(engine)  # at head: passes
    migrate.downgrade(engine, "0010")
    try:
        migrate.require_current(engine)
    except migrate.SchemaNotCurrent as exc:
        assert (exc.current, exc.head) == ("0010", migrate.head_revision(engine))
    else:
        raise AssertionError("a database one revision behind passed the schema check")
    migrate.downgrade(engine, "base")
    try:
        migrate.require_current(engine)
    except migrate.SchemaNotCurrent as exc:
        assert exc.current is None
    else:
        raise AssertionError("an empty database passed the schema check")
    engine.dispose()
