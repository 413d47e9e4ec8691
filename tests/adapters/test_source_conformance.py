"""One conformance suite every pull ``Source`` runs, like the Singer SDK's shared tap tests.

Each implementation comes as a kit that knows how to put data where its source reads it
(the real test FHIR server of tests/fhir_server for REST and Bulk $export, a folder for the
files and v2 drop sources), how to break one record, and where its watermarks are. The same
tests then hold every source to the same contract (adapters/base.py):

- paging: a data set larger than a page / file is read completely, each record once, and
  committed in several checkpoints rather than at the end;
- resume after a cut: a run killed after a commit, or dying on a cut connection, is finished
  by the next run from the committed state, with nothing lost and nothing changed;
- watermark monotonicity: within a run and across runs the committed watermarks never go
  back, and an incremental run after a change moves them forward and reads the change
  without re-reading everything;
- bad record isolation: one broken record becomes a ``RecordError`` naming where it was
  (never patient data), the run still finishes, the good records are read, and what the
  break hid is read by the next run.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.base import Checkpoint, Item, Record, RecordError, Source, SourceContext, SourceIncomplete
from adapters.incremental import parse_instant
from registry_adapter.app import App, build_app
from registry_adapter.config import parse_settings
from registry_adapter.feeds import feed_types
from tests.adapters.harness import Committed, run_once, run_until_done
from tests.adapters.spine_data import keys, spine_cohort
from tests.conftest import base_config
from tests.fhir_server.fixture import FhirTestServer

# As an operator writes them in config.yaml, with retries that do not make the tests wait.
FAST = {"timeout": [5, 10], "retries": 3, "backoff_factor": 0.01, "backoff_max": 0.1, "backoff_jitter": 0.01}
# What patient data in the test records looks like; never allowed in an error or progress text.
PHI_MARKERS = ("Testperson", "MRN10", "DEMO-", "Alex")


class Kit(ABC):
    """One Source implementation under the shared contract."""

    id: str  # the feed type (``type:`` in config.yaml)
    # Why the source keeps no watermark / has no transport to cut (None: it has them).
    no_watermark: str | None = None
    no_transport: str | None = None

    def __init__(self, app: App) -> None:
        self.app = app

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The source's settings as written in config.yaml (without name and type)."""

    def source(self) -> Source:
        """The Source exactly as ``sync`` builds it: through the registry of feed types."""
        feed = feed_types()[self.id]
        assert feed.build is not None
        written = {"type": self.id, "name": f"conformance-{self.id}", **self.config()}
        cfg = feed.settings.model_validate(written)
        return feed.build(cfg, self.app)

    @abstractmethod
    def seed(self, n: int) -> set[str]:
        """Put ``n`` patients' data where the source reads it; returns the record keys."""

    @abstractmethod
    def change(self) -> set[str]:
        """Change or add data after a first run; returns the keys an incremental run must read."""

    @abstractmethod
    def break_one(self) -> set[str]:
        """Break one record (or the unit it travels in) for the next read; returns the keys
        the break may hide in that read (read by the run after)."""

    def cut(self) -> None:
        """Make the next read die on a cut connection, more often than retries cover."""
        raise NotImplementedError

    def marks(self, state: Any) -> dict[str, float]:
        """The committed watermarks in ``state``, by name, as comparable numbers."""
        return {}

    def key(self, record: Record) -> str:
        return f"{record.resource['resourceType']}/{record.resource['id']}"


class RestKit(Kit):
    id = "fhir_rest"
    # The second page of a Procedure search with _count=3 (the server's opaque next link).
    PAGE2 = r"^/Procedure\?_getpages=.*_getpagesoffset=3\b"

    def __init__(self, app: App, fhir: FhirTestServer) -> None:
        super().__init__(app)
        self.fhir = fhir
        self.data: list[dict[str, Any]] = []

    def config(self) -> dict[str, Any]:
        return {"base_url": self.fhir.base_url, "page_size": 3, "http": FAST, "overlap_seconds": 60,
                "fetch_references": False}

    def seed(self, n: int) -> set[str]:
        self.data = spine_cohort(n, with_meta=True)  # back-dated, one minute apart
        self.fhir.seed(self.data, preserve_meta=True)
        return keys(self.data)

    def change(self) -> set[str]:
        cond = next(r for r in self.data if r["id"] == "cond-1")
        self.fhir.update({**cond, "clinicalStatus": {"coding": [{"code": "resolved"}]}, "meta": {}})
        return {"Condition/cond-1"}

    def break_one(self) -> set[str]:
        self.fhir.fault(self.PAGE2, "malformed", times=1)
        return {k for k in keys(self.data) if k.startswith("Procedure/")}

    def cut(self) -> None:
        self.fhir.fault(self.PAGE2, "cut", times=FAST["retries"] + 2)

    def marks(self, state: Any) -> dict[str, float]:
        types = state.get("types", {})
        return {t: parse_instant(s["watermark"]).timestamp() for t, s in types.items() if s.get("watermark")}


class BulkKit(Kit):
    id = "fhir_bulk"

    def __init__(self, app: App, fhir: FhirTestServer, work: Path) -> None:
        super().__init__(app)
        self.fhir = fhir
        self.work = work
        self.data: list[dict[str, Any]] = []

    def config(self) -> dict[str, Any]:
        return {"base_url": self.fhir.base_url, "http": FAST, "work_dir": str(self.work),
                "checkpoint_every": 5}

    def source(self) -> Source:
        src = super().source()
        src.sleep = lambda _s: None  # type: ignore[attr-defined]  # Retry-After: the bulk tests'
        return src

    def seed(self, n: int) -> set[str]:
        self.data = spine_cohort(n)
        self.fhir.seed(self.data)
        self.fhir.set_bulk(polls_before_ready=1, max_resources_per_file=3)
        return keys(self.data)

    def change(self) -> set[str]:
        time.sleep(0.01)  # server instants have millisecond resolution: be after transactionTime
        cond = next(r for r in self.data if r["id"] == "cond-1")
        self.fhir.update({**cond, "clinicalStatus": {"coding": [{"code": "resolved"}]}})
        return {"Condition/cond-1"}

    def break_one(self) -> set[str]:
        self.fhir.fault(r"^/bulk-files/.*/Procedure-1", "malformed", times=1)
        return {k for k in keys(self.data) if k.startswith("Procedure/")}

    def cut(self) -> None:
        self.fhir.fault(r"^/bulk-files/.*/Condition-1", "cut", times=FAST["retries"] + 2, partial_bytes=150)

    def marks(self, state: Any) -> dict[str, float]:
        return {"since": parse_instant(state["since"]).timestamp()} if state.get("since") else {}


class FilesKit(Kit):
    id = "files"
    no_transport = "reads local files: no connection to cut (the kill after a commit is tested)"

    def __init__(self, app: App, folder: Path) -> None:
        super().__init__(app)
        self.folder = folder
        self.folder.mkdir()
        self.data: list[dict[str, Any]] = []

    def config(self) -> dict[str, Any]:
        return {"path": str(self.folder), "patterns": ["*.ndjson"]}

    def seed(self, n: int) -> set[str]:
        self.data = spine_cohort(n)
        for p in range(1, n + 1):  # one file per patient, as a Bulk export folder has several
            mine = [r for r in self.data if _patient_of(r) == f"sp-{p}"]
            (self.folder / f"patient-{p}.ndjson").write_bytes(b"\n".join(orjson.dumps(r) for r in mine))
        return keys(self.data)

    def change(self) -> set[str]:
        cond = next(r for r in self.data if r["id"] == "cond-1")
        changed = {**cond, "clinicalStatus": {"coding": [{"code": "resolved"}]}}
        (self.folder / "changes.ndjson").write_bytes(orjson.dumps(changed))
        return {"Condition/cond-1"}

    def break_one(self) -> set[str]:
        path = self.folder / "patient-2.ndjson"
        lines = path.read_bytes().splitlines()
        path.write_bytes(b"\n".join([*lines[:2], b'{"resourceType": "Procedure", "id": ', *lines[2:]]))
        return set()

    def marks(self, state: Any) -> dict[str, float]:
        return {path: float(stamp[1]) for path, stamp in state.get("files", {}).items()}


class Hl7DropKit(Kit):
    id = "hl7v2_files"
    no_watermark = "a v2 drop folder keeps no watermark: a file moves to the archive once staged"
    no_transport = "reads local files: no connection to cut (the kill after a commit is tested)"

    def __init__(self, app: App, folder: Path) -> None:
        super().__init__(app)
        self.folder = folder
        self.folder.mkdir()

    def config(self) -> dict[str, Any]:
        return {"path": str(self.folder)}

    def source(self) -> Source:
        src = super().source()
        src.settle_seconds = 0  # type: ignore[attr-defined]  # files here are complete when written
        return src

    def _file(self, name: str, controls: list[str], bad_at: int | None = None) -> set[str]:
        messages = [_bar_p01(c) for c in controls]
        if bad_at is not None:
            messages.insert(bad_at, _bar_p01(""))  # no MSH-10: it cannot be told apart
        (self.folder / name).write_bytes(b"\n".join(messages))
        return {f"HL7v2Message/DEMOHOSP|{c}" for c in controls}

    def seed(self, n: int) -> set[str]:
        expected: set[str] = set()
        for p in range(1, n + 1):
            expected |= self._file(f"batch-{p}.hl7", [f"C{p}-1", f"C{p}-2"])
        return expected

    def change(self) -> set[str]:
        return self._file("late.hl7", ["LATE-1"])

    def break_one(self) -> set[str]:
        self._file("mixed.hl7", ["MIX-1", "MIX-2"], bad_at=1)
        return set()


def _patient_of(resource: dict[str, Any]) -> str:
    if resource["resourceType"] == "Patient":
        return str(resource["id"])
    return str(resource["subject"]["reference"].removeprefix("Patient/"))


def _bar_p01(control_id: str) -> bytes:
    """A spine-surgery BAR^P01 with a made-up patient."""
    return "\r".join([
        f"MSH|^~\\&|BILLING|DEMOHOSP|REGISTRY|SPINE|20250304120000||BAR^P01^BAR_P01|{control_id}|P|2.5.1",
        "EVN|P01|20250304120000",
        "PID|1||DEMO-1^^^DEMOHOSP^MR||Testperson^Alex||19600229|F",
        "PR1|1||22633^Lumbar interbody fusion^C4||20250301081500",
    ]).encode() + b"\r"


KITS = ("fhir_rest", "fhir_bulk", "files", "hl7v2_files")


@pytest.fixture(params=KITS)
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Kit:
    # An App only for the feed factories (nothing here opens its database).
    app = build_app(parse_settings(base_config(tmp_path)))
    if request.param == "fhir_rest":
        return RestKit(app, request.getfixturevalue("fhir"))
    if request.param == "fhir_bulk":
        return BulkKit(app, request.getfixturevalue("fhir"), tmp_path / "bulk-work")
    if request.param == "files":
        return FilesKit(app, tmp_path / "files")
    return Hl7DropKit(app, tmp_path / "drop")


def test_every_pulled_feed_type_runs_this_suite() -> None:
    # A new pull feed (one module in registry_adapter/feeds) fails here until it brings a kit.
    assert set(KITS) == {name for name, feed in feed_types().items() if feed.pulled}


class Recorder:
    """The source as the pipeline sees it, keeping every checkpoint's state."""

    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.name = inner.name
        self.states: list[dict[str, Any]] = []

    def read(self, ctx: SourceContext) -> Iterator[Item]:
        for item in self.inner.read(ctx):
            if isinstance(item, Checkpoint):
                self.states.append(orjson.loads(orjson.dumps(dict(item.state))))
            yield item


def finishes(src: Source, done: Committed) -> bool:
    """One run that ends normally, or with ``SourceIncomplete`` after yielding all it could
    (the pipeline records that run as partial and the next one resumes the stopped part)."""
    return run_once(src, done) or isinstance(done.crashes[-1], SourceIncomplete)


def read_keys(kit: Kit, done: Committed) -> list[str]:
    return [kit.key(r) for r in done.records]


def assert_no_phi(done: Committed) -> None:
    texts = [e.message for e in done.errors] + [e.origin for e in done.errors] + done.progress
    assert not [t for t in texts if any(m in t for m in PHI_MARKERS)]


def assert_monotonic(kit: Kit, states: list[Any], start: dict[str, float] | None = None) -> None:
    last = dict(start or {})
    for n, state in enumerate(states):
        for name, value in kit.marks(state).items():
            assert value >= last.get(name, value), f"{kit.id}: {name} went back at checkpoint {n}"
            last[name] = value


# -- paging ----------------------------------------------------------------------------------------


def test_paging_reads_everything_once_in_several_commits(kit: Kit) -> None:
    expected = kit.seed(4)
    src = Recorder(kit.source())

    done = run_until_done(src)

    assert Counter(read_keys(kit, done)) == Counter(expected)  # all, each exactly once
    assert not done.errors and done.runs == 1
    # Committed as it goes (a crash loses a page or a file, not the run), and ended by one.
    assert len(src.states) >= 3
    assert_no_phi(done)


# -- resume after a cut ----------------------------------------------------------------------------


def test_resume_after_a_kill_loses_nothing(kit: Kit) -> None:
    expected = kit.seed(4)
    src = kit.source()
    done = Committed()

    assert not run_once(src, done, stop_after_checkpoints=2)  # killed right after a commit
    assert set(read_keys(kit, done)) < expected  # the kill really came mid-way
    run_until_done(src, done)

    assert set(read_keys(kit, done)) == expected
    # Anything read twice (the resumed part) is unchanged, so staging's content hash drops it.
    assert all(len(v) == 1 for v in done.versions().values())
    assert not done.errors


def test_resume_after_a_cut_connection_loses_nothing(kit: Kit) -> None:
    if kit.no_transport:
        pytest.skip(kit.no_transport)
    expected = kit.seed(4)
    kit.cut()

    done = run_until_done(kit.source())

    assert len(done.crashes) == 1 and done.runs == 2  # the first run died on the cut
    assert set(read_keys(kit, done)) == expected
    assert all(len(v) == 1 for v in done.versions().values())


# -- watermark monotonicity ------------------------------------------------------------------------


def test_watermarks_never_go_back_and_move_with_changes(kit: Kit) -> None:
    if kit.no_watermark:
        pytest.skip(kit.no_watermark)
    expected = kit.seed(3)
    first_src = Recorder(kit.source())
    first = run_until_done(first_src)
    assert set(read_keys(kit, first)) == expected
    assert_monotonic(kit, first_src.states)
    before = kit.marks(first.state)
    assert before, f"{kit.id} committed no watermark"

    changed = kit.change()
    second_src = Recorder(kit.source())
    second = run_until_done(second_src, Committed(state=first.state))

    assert_monotonic(kit, second_src.states, start=before)
    after = kit.marks(second.state)
    assert any(after[k] > before.get(k, float("-inf")) for k in after), (before, after)
    assert changed <= set(read_keys(kit, second))
    assert len(second.records) < len(expected)  # incremental: not everything again


def test_an_unchanged_source_reads_nothing_new(kit: Kit) -> None:
    if kit.no_watermark:
        pytest.skip(kit.no_watermark)
    kit.seed(3)
    first = run_until_done(kit.source())
    second = run_until_done(kit.source(), Committed(state=first.state))
    # Overlap windows may re-read a little, never anything different.
    new = {k for k, v in second.versions().items() if v - first.versions().get(k, set())}
    assert not new
    before, after = kit.marks(first.state), kit.marks(second.state)
    assert set(after) == set(before) and all(after[k] >= before[k] for k in before)


# -- bad record isolation --------------------------------------------------------------------------


def test_a_bad_record_is_isolated(kit: Kit) -> None:
    expected = kit.seed(4)
    hidden = kit.break_one()
    expected_now = expected | (kit.change() if isinstance(kit, Hl7DropKit) else set())
    src = kit.source()
    done = Committed()

    assert finishes(src, done)  # one bad record does not stop the run

    assert done.errors and all(isinstance(e, RecordError) and e.code and e.origin for e in done.errors)
    read = set(read_keys(kit, done))
    assert expected_now - hidden <= read  # every good record outside the broken unit
    assert_no_phi(done)
    if hidden:
        # What the break hid comes with the next run; the committed state did not skip it.
        assert run_once(src, done)
        assert expected_now <= set(read_keys(kit, done))
        assert all(len(v) == 1 for v in done.versions().values())
