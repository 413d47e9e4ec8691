"""Staging on SQLite and PostgreSQL: dedup by content, newer wins, bad input kept, reused v2
control ids never lose a message, hostile metadata and concurrent writers never fail a run."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from sqlalchemy import select

from adapters.base import Record, RecordError
from adapters.hl7v2.header import message_digest
from adapters.hl7v2.records import HL7_CONTENT_TYPE, HL7_TYPE
from registry_adapter.app import App
from registry_store.staging import content_hash, mark_deleted, stage_errors, stage_records
from registry_store.tables import MAPPING_ERRORS as ERRORS
from registry_store.tables import STAGING
from tests.registry_store.test_hl7_sink import adt, before_staging_insert


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


def _v2(raw: bytes, ident: str = "SPINEHOSP|MSG1") -> Record:
    return Record(
        {"resourceType": HL7_TYPE, "id": ident}, "drop/a.hl7#1", raw=raw, content_type=HL7_CONTENT_TYPE
    )


def _short(raw: bytes) -> str:
    return message_digest(raw)[:12]


def test_a_reused_control_id_in_one_batch_keeps_both_messages_and_resends_are_no_ops(app: App) -> None:
    first, other = adt("MSG1", "V1"), adt("MSG1", "V2")
    with app.engine.begin() as conn:
        both = stage_records(conn, "drop", [_v2(first), _v2(other), _v2(other)])
    assert (both.inserted, both.unchanged) == (2, 1)
    rows = _rows(app)
    assert rows["SPINEHOSP|MSG1"].raw == first and rows[f"SPINEHOSP|MSG1#{_short(other)}"].raw == other
    # The second message resent, alone or with the first: found under either identity.
    for batch in ([_v2(other)], [_v2(first), _v2(other)]):
        with app.engine.begin() as conn:
            again = stage_records(conn, "drop", batch)
        assert (again.inserted, again.unchanged) == (0, len(batch))
    assert len(_rows(app)) == 2


def test_a_file_message_resent_with_a_new_msh7_is_not_staged_again(app: App) -> None:
    first = adt("MSG1", "V1")
    restamped = first.replace(b"|20250304120000|", b"|20250305093000|", 1)
    assert restamped != first
    with app.engine.begin() as conn:
        stage_records(conn, "drop", [_v2(first)])
        again = stage_records(conn, "drop", [_v2(restamped)])
    assert (again.inserted, again.unchanged) == (0, 1)
    assert [r.raw for r in _rows(app).values()] == [first]


def test_a_record_deleted_at_the_source_and_sent_again_goes_back_to_pending(app: App) -> None:
    with app.engine.begin() as conn:
        stage_records(conn, "s", [_rec("a"), _rec("b", updated="2025-03-01T00:00:00Z")])
        mark_deleted(conn, "s", "Procedure", "a")
        mark_deleted(conn, "s", "Procedure", "b")
    with app.engine.begin() as conn:
        # Identical content: the hash matches, yet the record exists at the source again.
        back = stage_records(conn, "s", [_rec("a")])
        # An older version (a replay from before the deletion) does not undo it.
        replay = stage_records(conn, "s", [_rec("b", updated="2025-02-01T00:00:00Z")])
    assert (back.updated, back.unchanged) == (1, 0) and replay.stale == 1
    rows = _rows(app)
    assert rows["a"].status == "pending" and rows["b"].status == "deleted"


def test_a_deleted_raw_message_sent_again_goes_back_to_pending(app: App) -> None:
    with app.engine.begin() as conn:
        stage_records(conn, "drop", [_v2(adt("MSG1"))])
        mark_deleted(conn, "drop", HL7_TYPE, "SPINEHOSP|MSG1")
        back = stage_records(conn, "drop", [_v2(adt("MSG1")), _v2(adt("MSG1"))])
    assert (back.updated, back.unchanged) == (1, 1) and _rows(app)["SPINEHOSP|MSG1"].status == "pending"


@pytest.mark.parametrize(
    "meta",
    [
        {"versionId": 7, "lastUpdated": 20250101},
        {"versionId": {"n": 1}, "lastUpdated": ["2025-01-01T00:00:00Z"]},
        {"versionId": "v" * 65, "lastUpdated": "2025-01-01T00:00:00.000000000000000000000Z"},
    ],
)
def test_hostile_meta_is_treated_as_absent(app: App, meta: dict[str, Any]) -> None:
    with app.engine.begin() as conn:
        stage_records(conn, "s", [_rec("a", updated="2025-03-01T00:00:00Z")])
        res = {"resourceType": "Procedure", "id": "a", "status": "stopped", "meta": meta}
        counts = stage_records(
            conn, "s", [Record(res, origin="test"), Record({**res, "id": "b"}, origin="test")]
        )
    # Without a usable lastUpdated the change cannot be judged stale: it is taken.
    assert (counts.updated, counts.inserted) == (1, 1)
    rows = _rows(app)
    for rid in ("a", "b"):
        assert (
            rows[rid].version_id is None and rows[rid].last_updated is None and rows[rid].status == "pending"
        )


@pytest.mark.parametrize(
    ("resource", "problem"),
    [
        ({"resourceType": "Procedure", "id": "x" * 257}, "Procedure.id is longer than 256 characters"),
        ({"resourceType": "P" * 65, "id": "a"}, "resourceType is longer than 64 characters"),
        ({"resourceType": "Procedure", "id": 12}, "Procedure.id is missing or not a string"),
        ({"id": "a"}, "resourceType is missing or not a string"),
    ],
)
def test_an_identity_that_does_not_fit_is_refused_without_its_content(
    app: App, resource: dict[str, Any], problem: str
) -> None:
    with app.engine.begin() as conn, pytest.raises(ValueError) as raised:
        stage_records(conn, "s", [_rec("fine"), Record(resource, origin="feed.ndjson:2")])
    assert str(raised.value) == f"cannot stage the record from feed.ndjson:2: {problem}"
    assert _rows(app) == {}


def test_a_record_staged_concurrently_by_another_process_does_not_fail_the_run(app: App) -> None:
    def other_process() -> None:
        with app.engine.begin() as other:
            stage_records(
                other, "s", [_rec("a", status="in-progress", updated="2025-01-01T00:00:00Z"), _rec("b")]
            )
            stage_records(other, "drop", [_v2(adt("MSG1", "V1"))])

    with before_staging_insert(app, other_process), app.engine.begin() as conn:
        ours = stage_records(
            conn, "s", [_rec("a", status="completed", updated="2025-02-01T00:00:00Z"), _rec("b")]
        )
        theirs_first = stage_records(conn, "drop", [_v2(adt("MSG1", "V2"))])
    # "a": theirs landed first, ours is newer and wins; "b": the same content either way.
    assert (ours.inserted, ours.updated) == (1, 1) and theirs_first.inserted == 1
    rows = _rows(app)
    assert b'"completed"' in rows["a"].raw and rows["b"].status == "pending"
    assert rows["SPINEHOSP|MSG1"].raw == adt("MSG1", "V1")
    assert rows[f"SPINEHOSP|MSG1#{_short(adt('MSG1', 'V2'))}"].raw == adt("MSG1", "V2")


def test_bad_input_staged_concurrently_by_another_process_does_not_fail_the_run(app: App) -> None:
    err = RecordError("feed.ndjson:3", "intake.malformed_json", "feed.ndjson line 3: invalid JSON", raw=b"{")

    def other_process() -> None:
        with app.engine.begin() as other:
            stage_errors(other, "s", [err])

    with before_staging_insert(app, other_process), app.engine.begin() as conn:
        stage_errors(conn, "s", [err])
    with app.engine.connect() as conn:
        assert len(conn.execute(select(STAGING)).all()) == 1
        assert len(conn.execute(select(ERRORS)).all()) == 1


def test_bad_input_with_an_oversized_type_or_id_is_kept_under_a_hash_identity(app: App) -> None:
    err = RecordError(
        "feed.ndjson:4",
        "intake.invalid_identity",
        "id too long",
        raw=b"{}",
        resource_type="P" * 65,
        resource_id="x" * 257,
    )
    with app.engine.begin() as conn:
        stage_errors(conn, "s", [err])
    (row,) = _rows(app).values()
    assert (
        row.resource_type == "Unparsed"
        and row.resource_id == "sha256-" + hashlib.sha256(b"{}").hexdigest()[:40]
    )
