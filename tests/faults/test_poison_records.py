"""A poison record stops only itself: deep nesting, byte order marks, versions out of order,
invalid UTF-8, on the real pipeline and a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select

from adapters.base import Record, SourceContext
from adapters.files import FilesSource, read_file
from registry_adapter.app import App
from registry_adapter.pipeline import Pipeline
from registry_store.staging import content_hash, stage_records
from registry_store.tables import MAPPING_ERRORS as ERRORS
from registry_store.tables import STAGING
from registry_types.json_limits import MAX_DEPTH, TOO_DEEP_CODE


def _patient(pid: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": "female", **extra}


def _nested(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"url": "http://example.org/leaf", "valueString": "x"}
    for _ in range(levels):
        node = {"url": "http://example.org/nested", "extension": [node]}
    return node


def _deep_patient(pid: str, levels: int = 300) -> dict[str, Any]:
    return _patient(pid, extension=[_nested(levels)])


def _sync(app: App, folder: Path, name: str = "files") -> Any:
    return Pipeline(app).ingest(FilesSource(name, [folder]), SourceContext())


def _staged(app: App) -> dict[tuple[str, str], str]:
    with app.engine.connect() as conn:
        rows = conn.execute(select(STAGING.c.resource_type, STAGING.c.resource_id, STAGING.c.status))
        return {(r.resource_type, r.resource_id): r.status for r in rows}


def _error_codes(app: App) -> list[str]:
    with app.engine.connect() as conn:
        return sorted(r.code for r in conn.execute(select(ERRORS.c.code)))


def test_content_hash_of_a_deep_resource_raised_before() -> None:
    # The defect as reported: orjson cannot re-serialise 300 levels.
    try:
        content_hash(_deep_patient("p1"))
    except TypeError:
        pass
    else:  # pragma: no cover - would mean orjson changed its limit
        raise AssertionError("expected orjson to refuse 300 levels")


def test_deep_record_becomes_its_own_error_and_the_run_goes_on(app: App, tmp_path: Path) -> None:
    feed = tmp_path / "feed"
    feed.mkdir()
    lines = [_patient("p1"), _deep_patient("p2"), _patient("p3")]
    (feed / "a.ndjson").write_bytes(b"\n".join(orjson.dumps(x) if i != 1 else json.dumps(x).encode()
                                              for i, x in enumerate(lines)))
    (feed / "b.ndjson").write_bytes(orjson.dumps(_patient("p4")))
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": _deep_patient("p5")}, {"resource": _patient("p6")}]}
    (feed / "c.json").write_text(json.dumps(bundle, indent=1))

    result = _sync(app, feed)

    assert result.outcome == "succeeded"
    staged = _staged(app)
    for pid in ("p1", "p3", "p4", "p6"):
        assert staged[("Patient", pid)] == "mapped"
    assert ("Patient", "p2") not in staged and ("Patient", "p5") not in staged
    assert _error_codes(app).count(TOO_DEEP_CODE) == 2
    # The next sync does not stumble on the same file again.
    assert _sync(app, feed).outcome == "succeeded"


def test_deep_record_never_overwrites_the_good_version(sqlite_app: App) -> None:
    with sqlite_app.engine.begin() as conn:
        stage_records(conn, "s", [Record(_patient("p1"), "a:1")])
    with sqlite_app.engine.begin() as conn:
        counts = stage_records(conn, "s", [Record(_deep_patient("p1", MAX_DEPTH + 5), "a:2")])
    assert counts.invalid == 1
    with sqlite_app.engine.connect() as conn:
        row = conn.execute(select(STAGING.c.raw).where(STAGING.c.resource_id == "p1")).one()
    assert orjson.loads(row.raw) == _patient("p1")


def test_byte_order_mark_is_skipped(app: App, tmp_path: Path) -> None:
    feed = tmp_path / "feed"
    feed.mkdir()
    bom = b"\xef\xbb\xbf"
    (feed / "a.ndjson").write_bytes(bom + orjson.dumps(_patient("p1")) + b"\n" + orjson.dumps(_patient("p2")))
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": _patient("p3")}]}
    (feed / "b.json").write_bytes(bom + json.dumps(bundle, indent=2).encode())
    (feed / "c.json").write_bytes(bom + json.dumps(_patient("p4"), indent=2).encode())

    result = _sync(app, feed)

    assert result.outcome == "succeeded" and result.counts.invalid == 0
    mapped = {k for k, v in _staged(app).items() if v == "mapped"}
    assert mapped == {("Patient", f"p{i}") for i in range(1, 5)}


def test_newest_version_wins_within_a_batch(app: App) -> None:
    newer = _patient("p1", meta={"versionId": "3", "lastUpdated": "2026-02-01T00:00:00Z"}, gender="male")
    older = _patient("p1", meta={"versionId": "2", "lastUpdated": "2026-01-01T00:00:00Z"})
    by_version_only_new = _patient("p2", meta={"versionId": "10"}, gender="male")
    by_version_only_old = _patient("p2", meta={"versionId": "9"})
    with app.engine.begin() as conn:
        batch = [newer, older, by_version_only_new, by_version_only_old]
        counts = stage_records(conn, "s", [Record(r, f"a:{i}") for i, r in enumerate(batch)])
    assert counts.stale == 2 and counts.inserted == 2
    # The same holds across batches, by versionId when lastUpdated is absent.
    with app.engine.begin() as conn:
        assert stage_records(conn, "s", [Record(by_version_only_old, "b:1")]).stale == 1
    with app.engine.connect() as conn:
        rows = {r.resource_id: orjson.loads(r.raw)["gender"] for r in conn.execute(select(STAGING))}
    assert rows == {"p1": "male", "p2": "male"}


def test_invalid_utf8_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "a.ndjson"
    good = orjson.dumps(_patient("p1"))
    bad = b'{"resourceType":"Patient","id":"p2","name":[{"family":"M\xfcller"}]}'
    path.write_bytes(good + b"\n" + bad + b"\n")
    errors = [i for i in read_file(path) if not isinstance(i, Record)]
    assert len(errors) == 1
    at = bad.index(b"\xfc")
    assert errors[0].message == f"a.ndjson line 2 is not valid UTF-8 at byte {at}"
    assert "surrogates" not in errors[0].message


def test_broken_first_line_does_not_drop_the_whole_ndjson_file(tmp_path: Path) -> None:
    path = tmp_path / "a.ndjson"
    broken = b'{"resourceType":"Patient","id":"p0",'
    lines = [broken, orjson.dumps(_patient("p1")), orjson.dumps(_patient("p2"))]
    path.write_bytes(b"\n".join(lines) + b"\n")
    items = list(read_file(path))
    assert [i.resource["id"] for i in items if isinstance(i, Record)] == ["p1", "p2"]
    assert [i.origin for i in items if not isinstance(i, Record)] == ["a.ndjson:1"]
