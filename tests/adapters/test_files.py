"""FHIR file source: NDJSON and Bundles, streamed, with errors that name file and line."""

from __future__ import annotations

import gzip
import json
import os
import tracemalloc
from pathlib import Path

from adapters.base import Checkpoint, Record, RecordError, SourceContext
from adapters.files import FilesSource, read_file, read_ndjson


def _proc(i: int, pad: int = 0) -> dict:
    return {
        "resourceType": "Procedure",
        "id": f"p{i}",
        "status": "completed",
        "subject": {"reference": f"Patient/x{i}"},
        "note": [{"text": "x" * pad}],
    }


def test_ndjson_malformed_line_is_an_error_and_the_rest_is_read(tmp_path: Path) -> None:
    path = tmp_path / "Procedure.ndjson"
    lines = [json.dumps(_proc(1)), '{"resourceType": "Procedure", "id": ', "", json.dumps(_proc(2))]
    path.write_text("\n".join(lines) + "\n")
    items = list(read_file(path))
    assert [type(i) for i in items] == [Record, RecordError, Record]
    err = items[1]
    assert isinstance(err, RecordError)
    assert err.origin == "Procedure.ndjson:2" and err.code == "intake.malformed_json"
    assert "Procedure.ndjson line 2" in err.message
    assert err.raw == b'{"resourceType": "Procedure", "id":'
    assert [i.resource["id"] for i in items if isinstance(i, Record)] == ["p1", "p2"]


def test_resources_without_type_or_id_are_errors_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "x.ndjson"
    path.write_text('{"id": "a"}\n{"resourceType": "Condition"}\n[1, 2]\n')
    errs = list(read_file(path))
    assert [e.code for e in errs] == [
        "intake.missing_resource_type",
        "intake.missing_id",
        "intake.not_a_resource",
    ]
    assert errs[1].field == "Condition.id"


def test_pretty_bundle_entries_are_streamed_with_fullurl_ids(tmp_path: Path) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:1111", "resource": {"resourceType": "Patient"}},
            {"resource": _proc(7)},
            {"request": {"method": "DELETE", "url": "Procedure/9"}},
        ],
    }
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle, indent=2))
    items = list(read_file(path))
    assert [(i.resource["resourceType"], i.resource["id"]) for i in items if isinstance(i, Record)] == [
        ("Patient", "1111"),
        ("Procedure", "p7"),
    ]
    assert items[0].origin == "bundle.json entry[0]"


def test_truncated_bundle_keeps_entries_before_the_break(tmp_path: Path) -> None:
    text = json.dumps(
        {"resourceType": "Bundle", "entry": [{"resource": _proc(i)} for i in range(3)]}, indent=1
    )
    path = tmp_path / "cut.json"
    path.write_text(text[: int(len(text) * 0.8)])
    items = list(read_file(path))
    assert isinstance(items[-1], RecordError) and items[-1].code == "intake.malformed_json"
    assert sum(isinstance(i, Record) for i in items) >= 1


def test_gzip_ndjson_and_single_resource_documents(tmp_path: Path) -> None:
    gz = tmp_path / "Procedure.ndjson.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write(json.dumps(_proc(1)) + "\n" + json.dumps(_proc(2)) + "\n")
    assert [i.resource["id"] for i in read_file(gz)] == ["p1", "p2"]
    single = tmp_path / "one.json"
    single.write_text(json.dumps(_proc(3), indent=2))
    assert [i.resource["id"] for i in read_file(single)] == ["p3"]
    empty = tmp_path / "empty.ndjson"
    empty.write_text("\n\n")
    [nothing] = read_file(empty)
    assert isinstance(nothing, RecordError) and nothing.code == "intake.empty_file"


def test_oversized_line_is_skipped_with_an_error(tmp_path: Path) -> None:
    path = tmp_path / "big.ndjson"
    path.write_text(json.dumps(_proc(1, pad=5000)) + "\n" + json.dumps(_proc(2)) + "\n")
    with path.open("rb") as fh:
        items = list(read_ndjson(fh, "big.ndjson", max_record_bytes=1000))
    assert isinstance(items[0], RecordError) and items[0].code == "intake.record_too_large"
    assert isinstance(items[1], Record) and items[1].resource["id"] == "p2"


def test_memory_stays_flat_on_large_files(tmp_path: Path) -> None:
    """~40 MB of NDJSON and a ~40 MB Bundle are read with a few MB of Python memory."""
    nd = tmp_path / "big.ndjson"
    with nd.open("w") as fh:
        for i in range(20_000):
            fh.write(json.dumps(_proc(i, pad=2000)) + "\n")
    bundle = tmp_path / "big-bundle.json"
    with bundle.open("w") as fh:
        fh.write('{"resourceType": "Bundle", "type": "collection", "entry": [\n')
        for i in range(20_000):
            fh.write(("," if i else "") + json.dumps({"resource": _proc(i, pad=2000)}) + "\n")
        fh.write("]}\n")
    assert nd.stat().st_size > 40e6 and bundle.stat().st_size > 40e6
    for path in (nd, bundle):
        tracemalloc.start()
        count = sum(1 for item in read_file(path) if isinstance(item, Record))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert count == 20_000
        assert peak < 8_000_000, f"{path.name}: peak {peak / 1e6:.1f} MB"


def test_files_source_reads_only_new_or_changed_files(tmp_path: Path) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "a.ndjson").write_text(json.dumps(_proc(1)) + "\n")
    src = FilesSource("drop", [folder], ["*.ndjson"])
    first = list(src.read(SourceContext()))
    state = [i for i in first if isinstance(i, Checkpoint)][-1].state
    assert sum(isinstance(i, Record) for i in first) == 1
    again = list(src.read(SourceContext(state=state)))
    assert not any(isinstance(i, Record) for i in again)
    (folder / "b.ndjson").write_text(json.dumps(_proc(2)) + "\n")
    os.utime(folder / "a.ndjson", ns=(1, 1))  # a touched file counts as changed
    third = [i.resource["id"] for i in src.read(SourceContext(state=state)) if isinstance(i, Record)]
    assert sorted(third) == ["p1", "p2"]
    full = [i for i in src.read(SourceContext(state=state, full=True)) if isinstance(i, Record)]
    assert len(full) == 2
