"""HL7 v2 end to end: a real MLLP client (python-hl7's mllp_send) and a drop folder, through
staging, v2→FHIR conversion and the one mapping engine into registry cases."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text

from adapters.base import SourceContext
from adapters.hl7v2.drop import Hl7DropFolder
from registry_adapter.app import App
from registry_adapter.feeds.mllp import MllpSource
from registry_adapter.listener import serve
from registry_adapter.pipeline import Pipeline, stats
from registry_adapter.queries import list_cases
from tests.conftest import table_count

MLLP_SEND = str(Path(sys.executable).with_name("mllp_send"))


def bar_p01(control_id: str, mrn: str, visit: str, cpt: str, surgery: str, dx: str = "M48.062") -> str:
    """A v2.5.1 BAR^P01 for a spine surgery, as hospital billing systems send it."""
    segments = [
        f"MSH|^~\\&|BILLING|SPINEHOSP|REGISTRY|SITE|20250304120000||BAR^P01^BAR_P01|{control_id}|P|2.5.1",
        "EVN|P01|20250304120000",
        f"PID|1||{mrn}^^^SPINEHOSP^MR||Testperson^Alex||19600229|F",
        _pv1(
            {
                1: "1",
                2: "I",
                3: "4W^401^1",
                10: "ORT",
                19: f"{visit}^^^SPINEHOSP^VN",
                44: "20250301063000",
                45: "20250304110000",
            }
        ),
        f"DG1|1||{dx}^Spinal stenosis, lumbar, with neurogenic claudication^I10||20250301|F",
        f"PR1|1||{cpt}^Spine surgery^C4||{surgery}|||||||SURG1^Cutter^Casey",
    ]
    return "\r".join(segments) + "\r"


def _pv1(fields: dict[int, str]) -> str:
    return "|".join(["PV1", *(fields.get(i, "") for i in range(1, max(fields) + 1))])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_listener(app: App, port: int) -> Iterator[None]:
    cfg = MllpSource(type="mllp", name="mllp", host="127.0.0.1", port=port, convert_every_seconds=0.2)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(serve(app, cfg, stop=stop, ready=started))
        await started.wait()
        ready.set()
        await task

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


def test_mllp_send_to_listener_to_cases(make_app: Callable[..., App], db_url: str, tmp_path: Path) -> None:
    app = make_app(db_url)
    messages = tmp_path / "batch.hl7"
    messages.write_text(
        bar_p01("MSG0001", "MRN-1", "V-1", "22633", "20250301081500")
        + "\n"
        + bar_p01("MSG0002", "MRN-2", "V-2", "22551", "20250302091500", dx="M50.12")
        + "\n"
    )
    port = _free_port()
    with running_listener(app, port):
        sent = subprocess.run(
            [MLLP_SEND, "--port", str(port), "--file", str(messages), "--loose", "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.count("MSA|AA|") == 2, sent.stdout
        # A resend of the same control ids is acknowledged but not staged twice.
        again = subprocess.run(
            [MLLP_SEND, "--port", str(port), "--file", str(messages), "--loose", "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.stdout.count("MSA|AA|") == 2
    assert table_count(app, "staging", "WHERE resource_type = 'HL7v2Message'") == 2
    assert table_count(app, "hl7_acks", "WHERE ack_code = 'AA'") == 4
    with app.engine.connect() as conn:
        cases = {c["category"]: c for c in list_cases(conn)}
    assert set(cases) == {"plif_tlif", "acdf"}
    lumbar = cases["plif_tlif"]
    assert (lumbar["surgery_date"], lumbar["admission_date"], lumbar["discharge_date"]) == (
        "2025-03-01",
        "2025-03-01",
        "2025-03-04",
    )
    assert lumbar["diagnoses"] == ["stenosis"] and cases["acdf"]["diagnoses"] == ["radiculopathy"]
    assert stats(app)["patients"] == 2


def test_unsupported_and_broken_messages_are_nakd_and_kept(
    make_app: Callable[..., App], tmp_path: Path
) -> None:
    app = make_app()
    bad = tmp_path / "bad.hl7"
    bad.write_text(
        bar_p01("", "MRN-3", "V-3", "22633", "20250301081500").replace("|P|2.5.1", "|P|2.5.1") + "\n"
    )
    port = _free_port()
    with running_listener(app, port):
        sent = subprocess.run(
            [MLLP_SEND, "--port", str(port), "--file", str(bad), "--loose", "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert "MSA|AR|" in sent.stdout or "MSA|AE|" in sent.stdout
    with app.engine.connect() as conn:
        staged = conn.execute(text("SELECT status FROM staging")).scalars().all()
        codes = conn.execute(text("SELECT code FROM mapping_errors")).scalars().all()
    assert staged == ["invalid"] and codes == ["hl7.missing_control_id"]


def test_drop_folder_archives_good_files_and_quarantines_bad_ones(sqlite_app: App, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "good.hl7").write_text(
        bar_p01("F-1", "MRN-9", "V-9", "63047", "20250303100000").replace("\r", "\n")
    )
    (drop / "bad.hl7").write_bytes(b"\x00\x01garbage that is not HL7\n")
    source = Hl7DropFolder("drop", drop, patterns=("*.hl7",), settle_seconds=0)
    result = Pipeline(sqlite_app).ingest(source, SourceContext())
    assert result.outcome == "succeeded"
    archived = list((drop / "archive").iterdir())
    quarantined = sorted(p.name for p in (drop / "quarantine").iterdir())
    assert [p.name.endswith("-good.hl7") for p in archived] == [True]
    assert len(quarantined) == 2 and quarantined[1].endswith("-bad.hl7.errors.txt")
    assert not list(drop.glob("*.hl7"))
    with sqlite_app.engine.connect() as conn:
        (case,) = list_cases(conn)
    assert case["category"] == "lumbar_laminectomy" and case["surgery_date"] == "2025-03-03"


def test_the_daemon_runs_the_listener_as_a_service(make_app: Callable[..., App], tmp_path: Path) -> None:
    from registry_adapter.listener import make_service

    port = _free_port()
    app = make_app(
        sources=[
            {"name": "mllp", "type": "mllp", "host": "127.0.0.1", "port": port, "convert_every_seconds": 0.2}
        ]
    )
    service = make_service(app)
    assert service is not None and service.name == "mllp:mllp"
    service.start()
    try:
        messages = tmp_path / "one.hl7"
        messages.write_text(bar_p01("SVC-1", "MRN-7", "V-7", "22612", "20250302081500") + "\n")
        sent = subprocess.run(
            [MLLP_SEND, "--port", str(port), "--file", str(messages), "--loose", "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "MSA|AA|SVC-1" in sent.stdout
    finally:
        service.stop()
    with app.engine.connect() as conn:
        (case,) = list_cases(conn)
    assert case["category"] == "posterior_lumbar_fusion"
    no_listener = make_app(f"sqlite:///{tmp_path / 'other.db'}")
    assert make_service(no_listener) is None


def test_idle_timeout_from_the_listener_config(make_app: Callable[..., App]) -> None:
    from adapters.hl7v2.framing import frame
    from registry_adapter.listener import build_listener, idle_timeout

    app = make_app()
    cfg = MllpSource(type="mllp", name="mllp", host="127.0.0.1", port=0)
    assert idle_timeout(cfg) == 300  # on by default: an idle connection cannot be held forever
    # ``idle_timeout_seconds`` is the key the lead adds to MllpSource (registry_adapter/feeds/mllp.py).
    timed = cfg.model_copy(update={"idle_timeout_seconds": 0.3})
    message = bar_p01("IDLE01", "MRN-1", "V-1", "22633", "20250301081500").encode()

    async def main() -> float:
        listener = build_listener(app, timed, port=0)
        await listener.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.bound_port)
            writer.write(frame(message))
            assert b"MSA|AA|IDLE01" in await reader.readuntil(b"\x1c\r")
            t0 = asyncio.get_running_loop().time()
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the listener
            writer.close()
            return asyncio.get_running_loop().time() - t0
        finally:
            await listener.close()

    assert 0.2 < asyncio.run(main()) < 5
    assert table_count(app, "staging", "WHERE resource_type = 'HL7v2Message'") == 1
