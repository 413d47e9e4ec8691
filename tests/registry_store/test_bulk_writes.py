"""The bulk write primitives of ``registry_store.db`` (cached plans, set-based updates,
index-probing lookups) write and read what SQLAlchemy's row-by-row statements would, on both
databases."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import select

from registry_adapter.app import App
from registry_store.db import insert_new, lookup, update_rows, upsert
from registry_store.tables import MAPPING_ERRORS, PATIENTS, STAGING, VALIDATION_VERDICTS

IDENTITY = ["source", "resource_type", "resource_id"]


def _staging_row(rid: str, digest: str, now: datetime) -> dict[str, Any]:
    return {
        "source": "s", "resource_type": "Patient", "resource_id": rid, "version_id": None,
        "last_updated": None, "content_type": "application/fhir+json", "content_hash": digest,
        "raw": b"{}", "origin": "t", "status": "pending", "updated_at": now, "received_at": now,
    }


def test_upsert_fills_scalar_defaults_and_later_rows_update(app: App) -> None:
    rows: list[dict[str, Any]] = [
        {"source": "s", "id": "p1", "mrn": "1", "birth_date": date(1960, 1, 2)},
        {"source": "s", "id": "p2", "mrn": "2", "birth_date": None},
        # The same key again in one call: its updated columns win, as row by row.
        {"source": "s", "id": "p1", "mrn": "1b", "birth_date": date(1961, 3, 4)},
    ]
    with app.engine.begin() as conn:
        upsert(conn, PATIENTS, rows, keys=["source", "id"])
        got = {r.id: r for r in conn.execute(select(PATIENTS).order_by(PATIENTS.c.id))}
    assert got["p1"].mrn == "1b" and got["p1"].birth_date == date(1961, 3, 4)
    assert got["p2"].birth_date is None
    assert got["p1"].deceased is False and got["p2"].opted_out is False  # scalar column defaults


def test_upsert_keeps_json_and_timestamps(app: App) -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    rows: list[dict[str, Any]] = [
        {"digest": "a", "validator": "v", "issues": [], "checked_at": now},
        {"digest": "b", "validator": "v", "issues": [{"code": "x", "message": "é"}], "checked_at": now},
    ]
    with app.engine.begin() as conn:
        upsert(conn, VALIDATION_VERDICTS, rows, keys=["digest", "validator"], update=[])
        got = {r.digest: r for r in conn.execute(select(VALIDATION_VERDICTS))}
    assert got["a"].issues == [] and got["b"].issues == [{"code": "x", "message": "é"}]
    assert got["b"].checked_at == now


def test_insert_new_counts_what_landed(app: App) -> None:
    now = datetime.now(UTC)
    with app.engine.begin() as conn:
        first = [_staging_row("a", "1", now), _staging_row("b", "2", now)]
        assert insert_new(conn, STAGING, first, keys=IDENTITY) == 2
        # One already there, one twice in the call: only the new one lands, once.
        again = [_staging_row("a", "9", now), _staging_row("c", "3", now), _staging_row("c", "4", now)]
        assert insert_new(conn, STAGING, again, keys=IDENTITY) == 1
        got = dict(conn.execute(select(STAGING.c.resource_id, STAGING.c.content_hash)).all())
    assert got == {"a": "1", "b": "2", "c": "3"}


def test_update_rows_and_lookup(app: App) -> None:
    now = datetime.now(UTC)
    with app.engine.begin() as conn:
        insert_new(conn, STAGING, [_staging_row(r, r, now) for r in ("a", "b", "c")], keys=IDENTITY)
        ids = dict(conn.execute(select(STAGING.c.resource_id, STAGING.c.id)).all())
        update_rows(
            conn, STAGING,
            [
                {"id": ids["a"], "content_hash": "a", "status": "mapped", "mapped_at": now},
                {"id": ids["b"], "content_hash": "other", "status": "mapped", "mapped_at": now},  # guarded
            ],
            where=("id", "content_hash"), values=("status", "mapped_at"),
        )
        found = lookup(conn, STAGING, ("resource_id", "status"), {"source": "s", "resource_type": "Patient"},
                       "resource_id", ["a", "b", "a", "zz"])
        assert not lookup(conn, MAPPING_ERRORS, ("id",), {"source": "s"}, "staging_id", [])
    assert sorted((r.resource_id, r.status) for r in found) == [("a", "mapped"), ("b", "pending")]
