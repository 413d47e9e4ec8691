"""Seeded fuzzing: ≥ 5,000 mutated FHIR records through the real pipeline (file reading,
staging, validation, mapping) and ≥ 5,000 mutated HL7 v2 messages through the listener's
path (framing, MSH check, the staging sink), with zero unhandled exceptions: every input is
a staged record or an error naming it. Bounded: v2 → FHIR conversion (hl7apy, ~20 ms a
message) runs on as many mutated messages as fit in a fixed time budget."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import select

from adapters.base import SourceContext
from adapters.files import FilesSource
from adapters.hl7v2.framing import Frame, MLLPFramer, frame
from adapters.hl7v2.header import HeaderCheckError, read_header
from adapters.hl7v2.mllp import InboundMessage, StoreStatus
from adapters.hl7v2.records import convert_staged
from registry_adapter.app import App
from registry_adapter.pipeline import Pipeline
from registry_store.hl7_sink import StagingSink
from registry_store.tables import MAPPING_ERRORS as ERRORS
from tests.conftest import SAMPLE_FEED
from tests.faults.mutations import mutate_bytes, mutate_fhir_line, mutate_v2
from tests.hl7v2.conftest import MESSAGES

SEED = 20261205
FHIR_MUTATIONS = 5000
V2_MUTATIONS = 5000
CONVERT_BUDGET_SECONDS = 6.0
# Problems the code reports when it had to catch something it did not expect. (A value of
# the wrong JSON type reaching a column is refused by the database and kept as
# ``store.write_failed``: handled, that record alone; its own check is a separate item.)
UNEXPECTED = {"mapping.internal_error", "intake.unstageable"}


def _sample_resources() -> list[dict[str, object]]:
    found = []
    for path in sorted(SAMPLE_FEED.glob("*.ndjson")):
        for line in path.read_text().splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:  # the feed's deliberately broken line
                continue
    return found


def test_fhir_mutations_never_stop_the_pipeline(sqlite_app: App, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    resources = _sample_resources()
    folder = tmp_path / "fuzz"
    folder.mkdir()
    lines = [mutate_fhir_line(rng, rng.choice(resources)) for _ in range(FHIR_MUTATIONS)]
    for n in range(5):
        chunk = lines[n * 1000 : (n + 1) * 1000]
        # Newlines a mutation put inside a line split it: that is part of the fuzz.
        (folder / f"part{n}.ndjson").write_bytes(b"\n".join(chunk) + b"\n")
    for n in range(40):  # pretty-printed Bundles, mutated as a whole
        entries = [{"resource": rng.choice(resources)} for _ in range(5)]
        doc = json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}, indent=1)
        (folder / f"bundle{n}.json").write_bytes(
            mutate_fhir_line(rng, {"x": 0}) if n % 10 == 0 else mutate_bytes(rng, doc.encode()))

    result = Pipeline(sqlite_app).ingest(FilesSource("fuzz", [folder]), SourceContext())

    assert result.outcome == "succeeded"
    assert result.counts.received >= FHIR_MUTATIONS * 0.95
    with sqlite_app.engine.connect() as conn:
        codes = {r.code for r in conn.execute(select(ERRORS.c.code).distinct())}
    assert not codes & UNEXPECTED, codes & UNEXPECTED
    assert "intake.malformed_json" in codes and "intake.record_too_deep" in codes


def test_v2_mutations_are_all_answered_and_kept(sqlite_app: App) -> None:
    rng = random.Random(SEED)
    originals = [p.read_bytes() for p in sorted(MESSAGES.glob("*.hl7"))]
    mutated = [mutate_v2(rng, rng.choice(originals)) for _ in range(V2_MUTATIONS)]
    # One stream, as a sender would write it: framing sees the mutations too.
    framer = MLLPFramer(64 * 1024)
    frames = [e.payload for m in mutated for e in framer.feed(frame(m)) if isinstance(e, Frame)]
    assert len(frames) >= V2_MUTATIONS * 0.9

    sink = StagingSink(sqlite_app.engine, "fuzz-mllp")
    messages = []
    for n, payload in enumerate(frames):
        try:
            header, error = read_header(payload), None
        except HeaderCheckError as exc:
            header, error = exc.error.header, exc.error
        messages.append(InboundMessage(payload, header, error, datetime.now(UTC), f"fuzz#{n}"))
    outcomes = []
    for start in range(0, len(messages), 500):
        outcomes += sink.store(messages[start : start + 500])
    assert len(outcomes) == len(messages)
    assert {o.status for o in outcomes} <= set(StoreStatus)
    assert sum(o.status is StoreStatus.REJECTED for o in outcomes) > 0

    tz, converted, deadline = ZoneInfo("America/Chicago"), 0, time.monotonic() + CONVERT_BUDGET_SECONDS
    for n, payload in enumerate(frames):
        if time.monotonic() > deadline:
            break
        result = convert_staged(payload, f"FAC|fuzz{n}", tz)  # must not raise
        assert not any(i.code == "mapping.internal_error" for i in result.issues)
        converted += 1
    assert converted >= 20
