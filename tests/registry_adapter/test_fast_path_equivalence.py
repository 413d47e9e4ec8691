"""The fast import path leaves the registry exactly as the reference path does.

Reference: every record validated by the fhir.resources models, no verdict cache. Fast: the
compiled pre-check, verdicts cached by content, then ``reprocess --all`` reading the cache.
The feed is the bundled sample plus records with validation faults (a time without an offset,
a wrong JSON type, an empty string, an unknown element), so both the clean and the faulty
ways through validation are compared, on every registry table and every mapping error.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text

import adapters.validation
from adapters.base import SourceContext
from adapters.files import FilesSource
from registry_adapter.app import App
from registry_adapter.pipeline import Pipeline
from tests.conftest import SAMPLE_FEED
from tests.registry_content import registry_content


def _faulty_records() -> list[dict[str, Any]]:
    base = orjson.loads((SAMPLE_FEED / "Procedure.ndjson").read_bytes().splitlines()[0])
    naive = {**base, "id": "fault-naive", "performedDateTime": "2025-03-14T08:30:00"}
    wrong_type = {**base, "id": "fault-type", "status": 7}
    empty = {**base, "id": "fault-empty", "code": {**base["code"], "text": ""}}
    unknown = {**base, "id": "fault-unknown", "surgeonNickname": "x"}
    return [naive, wrong_type, empty, unknown]


@pytest.fixture
def feed(tmp_path: Path) -> Path:
    return make_feed(tmp_path)


def make_feed(tmp_path: Path) -> Path:
    """The sample feed plus records with validation faults, in a folder of its own."""
    dest = tmp_path / "feed"
    shutil.copytree(SAMPLE_FEED, dest)
    (dest / "Faults.ndjson").write_bytes(b"\n".join(orjson.dumps(r) for r in _faulty_records()) + b"\n")
    return dest


def _snapshot(app: App) -> dict[str, list[tuple[Any, ...]]]:
    with app.engine.connect() as conn:
        return registry_content(conn)


def _import(app: App, feed: Path) -> None:
    Pipeline(app).ingest(FilesSource("sample", [feed]), SourceContext())


@pytest.mark.parametrize("validation", ["warn", "strict"])
def test_fast_path_gives_the_reference_rows(
    make_app: Callable[..., App], tmp_path: Path, feed: Path, monkeypatch: pytest.MonkeyPatch, validation: str
) -> None:
    fast = make_app(f"sqlite:///{tmp_path / 'fast.db'}", mappings={"validation": validation})
    _import(fast, feed)
    fast_rows = _snapshot(fast)
    with fast.engine.connect() as conn:
        verdicts = conn.execute(text("SELECT count(*) FROM validation_verdicts")).scalar_one()
    assert verdicts > 200  # every FHIR record's verdict was kept

    # Remap from raw: verdicts come from the cache, no validation runs at all.
    def no_validation(_resource: dict[str, Any]) -> list[Any]:
        raise AssertionError("a cached verdict was validated again")

    with monkeypatch.context() as patched:
        patched.setattr(adapters.validation, "validate", no_validation)
        patched.setattr(adapters.validation, "certainly_clean", no_validation)
        Pipeline(fast).reprocess(everything=True)
    assert _snapshot(fast) == fast_rows

    reference = make_app(f"sqlite:///{tmp_path / 'reference.db'}", mappings={"validation": validation})
    with monkeypatch.context() as patched:
        # The reference path: fhir.resources on every record, nothing cached.
        patched.setattr(adapters.validation, "certainly_clean", lambda _resource: False)
        patched.setattr("registry_adapter.pipeline.known_verdicts", lambda *_args: {})
        _import(reference, feed)
    reference_rows = _snapshot(reference)
    assert reference_rows == fast_rows
    # The faults really went through validation and were reported.
    codes = {dict(r)["code"] for r in reference_rows["mapping_errors"]}
    assert {"validation.time_without_offset", "validation.wrong_type", "validation.invalid_element"} <= codes


def _adt(i: int) -> bytes:
    """A spine-surgery ADT^A08 (made-up patient); every third one re-sends patient 0's stay
    with a new procedure code, so conversions update records staged by earlier messages."""
    pid = 0 if i % 3 == 0 else i
    code = ("22633", "63047", "22551")[i % 3]
    segs = [
        f"MSH|^~\\&|EPIC|GOODHEALTH|REG|SPINE|20250301101500||ADT^A08^ADT_A01|EQ{i:05d}|P|2.5.1",
        "EVN|A08|20250301101500",
        f"PID|1||DEMO{pid:05d}^^^GOODHEALTH^MR||TESTPERSON^ALEX||19700101|F",
        f"PV1|1|I|4W^401^1^GOODHEALTH||||1234^BONE^ROBERT^^^DR|||ORT||||1|||1234^BONE^ROBERT^^^DR|IN|"
        f"V{pid:05d}|||||||||||||||||||||||||20250301080000|20250303120000",
        "DG1|1||M48.062^Spinal stenosis^I10||20250301|A",
        f"PR1|1||{code}^Spine procedure^C4||20250301093000|||||||5678^CUTTER^SAM^^^DR^^^GOODHEALTH",
    ]
    return "\r".join(segs).encode() + b"\r"


def test_mapping_in_worker_processes_gives_the_same_rows(
    make_app: Callable[..., App], tmp_path: Path, feed: Path
) -> None:
    # Small batches so the pool runs with several batches in flight, v2 messages among them
    # (their conversions stage records while later batches are already being mapped).
    (feed / "adt.hl7").write_bytes(b"\n".join(_adt(i) for i in range(40)))
    one = make_app(f"sqlite:///{tmp_path / 'one.db'}", batch_size=40)
    _import(one, feed)
    pooled = make_app(f"sqlite:///{tmp_path / 'pooled.db'}", batch_size=40, mapping_workers=2)
    _import(pooled, feed)
    rows = _snapshot(one)
    assert len(rows["staging"]) > 400
    assert any(dict(r)["resource_type"] == "HL7v2Message" for r in rows["staging"])
    assert _snapshot(pooled) == rows
    Pipeline(pooled).reprocess(everything=True)
    assert _snapshot(pooled) == rows
