"""Staging on SQLite and PostgreSQL: dedup by content, newer wins, bad input kept."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from adapters.base import Record, RecordError
from registry_adapter.app import App
from registry_store.errors import ERRORS
from registry_store.staging import STAGING, content_hash, stage_errors, stage_records


def _rec(
    rid: str, status: str = "completed", updated: str = "2025-01-01T00:00:00Z", version: str = "1"
) -> Record:
    res: dict[str, Any] = {
        "resourceType": "Procedure",
        "id": rid,
        "status": status,
        "meta": {"versionId": version, "lastUpdated": updated},
    }
    return Record(res, origin="test")


def _rows(app: App) -> dict[str, Any]:
    with app.engine.connect() as conn:
        return {r.resource_id: r for r in conn.execute(select(STAGING))}


def test_same_content_is_a_no_op_and_changes_go_back_to_pending(app: App) -> None:
    with app.engine.begin() as conn:
        first = stage_records(conn, "s", [_rec("a"), _rec("b")])
    assert (first.inserted, first.unchanged) == (2, 0)
    with app.engine.begin() as conn:
        conn.execute(STAGING.update().values(status="mapped"))
        # Same content, new server bookkeeping (version, lastUpdated): nothing to do.
        again = stage_records(conn, "s", [_rec("a", updated="2025-02-01T00:00:00Z", version="2")])
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 1)
    assert _rows(app)["a"].status == "mapped"
    with app.engine.begin() as conn:
        changed = stage_records(conn, "s", [_rec("a", status="stopped", updated="2025-03-01T00:00:00Z")])
    assert changed.updated == 1
    row = _rows(app)["a"]
    assert row.status == "pending" and b'"stopped"' in row.raw and row.last_updated == "2025-03-01T00:00:00Z"


def test_an_older_version_never_overwrites_a_newer_one(app: App) -> None:
    with app.engine.begin() as conn:
        stage_records(conn, "s", [_rec("a", status="completed", updated="2025-03-01T00:00:00+01:00")])
        stale = stage_records(conn, "s", [_rec("a", status="in-progress", updated="2025-02-28T22:30:00Z")])
    assert stale.stale == 1
    assert b'"completed"' in _rows(app)["a"].raw


def test_sources_do_not_share_identities(app: App) -> None:
    with app.engine.begin() as conn:
        stage_records(conn, "one", [_rec("a")])
        other = stage_records(conn, "two", [_rec("a")])
    assert other.inserted == 1


def test_bad_input_is_kept_with_its_error_once(app: App) -> None:
    err = RecordError(
        "feed.ndjson:3", "intake.malformed_json", "feed.ndjson line 3: invalid JSON", raw=b'{"res'
    )
    for _ in range(2):
        with app.engine.begin() as conn:
            stage_errors(conn, "s", [err])
    with app.engine.connect() as conn:
        staged = conn.execute(select(STAGING)).all()
        errors = conn.execute(select(ERRORS)).all()
    assert len(staged) == 1 and staged[0].status == "invalid" and staged[0].raw == b'{"res'
    assert len(errors) == 1 and errors[0].code == "intake.malformed_json" and errors[0].status == "open"


def test_content_hash_ignores_key_order_and_meta_bookkeeping() -> None:
    a = {"resourceType": "Patient", "id": "1", "gender": "female", "meta": {"versionId": "1", "source": "x"}}
    b = {
        "meta": {"source": "x", "versionId": "9", "lastUpdated": "2020-01-01T00:00:00Z"},
        "gender": "female",
        "id": "1",
        "resourceType": "Patient",
    }
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash({**a, "gender": "male"})
