"""The MLLP listener cannot be exhausted by its peers: connection cap, buffer budget, idle
timeout, allow-listed senders, oversize and undelivered ACKs on record. Real sockets, the
real staging sink on SQLite."""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from adapters.hl7v2.framing import START, frame
from adapters.hl7v2.mllp import COUNTERS, DEFAULT_IDLE_TIMEOUT
from registry_adapter.app import App
from registry_adapter.feeds.mllp import MllpSource
from registry_store.tables import HL7_ACKS as ACKS
from registry_store.tables import MAPPING_ERRORS as ERRORS
from registry_store.tables import STAGING
from tests.faults.listener_harness import GatedSink, RunningListener
from tests.hl7v2.conftest import connect, make_message, msa, read_frame

ROOT = Path(__file__).resolve().parents[2]


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _acks(app: App) -> list[tuple[str | None, str, bool, str | None]]:
    with app.engine.connect() as conn:
        rows = conn.execute(select(ACKS.c.control_id, ACKS.c.ack_code, ACKS.c.delivered, ACKS.c.error)
                            .order_by(ACKS.c.id))
        return [(r.control_id, r.ack_code, r.delivered, r.error) for r in rows]


def test_idle_timeout_is_on_by_default() -> None:
    assert DEFAULT_IDLE_TIMEOUT == 300
    assert MllpSource(type="mllp", name="m").idle_timeout_seconds == 300


def test_connections_over_the_cap_are_refused_and_counted(sqlite_app: App) -> None:
    refused_before = COUNTERS.connections_refused
    with RunningListener(sqlite_app, max_connections=3) as lt:
        held = [connect(lt.port) for _ in range(3)]
        deadline = time.monotonic() + 5
        while lt.open_connections() < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        with connect(lt.port) as extra:
            assert _closed_by_peer(extra)
        assert COUNTERS.connections_refused == refused_before + 1
        # The senders already connected are served; a freed slot is usable again.
        held[0].sendall(frame(make_message("CAP1")))
        assert msa(read_frame(held[0]))[1:3] == ["AA", "CAP1"]
        held.pop().close()
        deadline = time.monotonic() + 5
        while lt.open_connections() > 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        with connect(lt.port) as again:
            again.sendall(frame(make_message("CAP2")))
            assert msa(read_frame(again))[1:3] == ["AA", "CAP2"]
        for s in held:
            s.close()


def test_half_received_frames_count_against_one_budget(sqlite_app: App) -> None:
    over_before = COUNTERS.connections_over_budget
    with RunningListener(sqlite_app, max_buffer_bytes=100_000, max_message_bytes=1024 * 1024) as lt:
        first, second = connect(lt.port), connect(lt.port)
        message = make_message("HALF1", body_bytes=60_000)
        first.sendall(START + message[:60_000])
        time.sleep(0.2)  # let the listener buffer the first half-frame before the second
        second.sendall(START + make_message("HALF2", body_bytes=60_000)[:60_000])
        assert _closed_by_peer(second)
        assert COUNTERS.connections_over_budget == over_before + 1
        # The first sender finishes its message and is acknowledged as usual.
        first.sendall(message[60_000:] + b"\x1c\r")
        assert msa(read_frame(first))[1:3] == ["AA", "HALF1"]
        first.close()


def test_oversize_message_leaves_an_ack_row_and_a_feed_health_entry(sqlite_app: App) -> None:
    with RunningListener(sqlite_app, max_message_bytes=64 * 1024) as lt, connect(lt.port) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(frame(make_message("BIG1", body_bytes=200_000)))
        assert msa(read_frame(s))[1:3] == ["AR", "BIG1"]
    [(control_id, code, delivered, error)] = _acks(sqlite_app)
    assert (control_id, code, delivered) == ("BIG1", "AR", True) and "limit" in (error or "")
    with sqlite_app.engine.connect() as conn:
        assert conn.execute(select(STAGING.c.status)).scalar_one() == "invalid"
        assert conn.execute(select(ERRORS.c.code)).scalar_one() == "hl7.message_too_large"


def test_ack_that_could_not_be_delivered_is_recorded_so(sqlite_app: App) -> None:
    sink = GatedSink(sqlite_app.engine, "mllp")
    undelivered_before = COUNTERS.acks_undelivered
    with RunningListener(sqlite_app, sink=sink) as lt:
        s = connect(lt.port)
        s.sendall(frame(make_message("GONE1")))
        assert sink.arrived.wait(10)
        # The sender gives up (RST) while the message is being stored.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        time.sleep(0.2)  # the listener's loop sees the reset before the store returns
        sink.gate.set()
        deadline = time.monotonic() + 10
        while COUNTERS.acks_undelivered == undelivered_before and time.monotonic() < deadline:
            time.sleep(0.02)
        deadline = time.monotonic() + 10
        while _acks(sqlite_app)[0][2] and time.monotonic() < deadline:
            time.sleep(0.02)
    assert _acks(sqlite_app) == [("GONE1", "AA", False, None)]


def test_senders_not_on_the_allow_list_get_ar_and_are_kept_apart(sqlite_app: App) -> None:
    with RunningListener(sqlite_app, allowed_senders=["*|FAC"]) as lt, connect(lt.port) as s:
        s.sendall(frame(make_message("OK1", facility="FAC")))
        assert msa(read_frame(s))[1:3] == ["AA", "OK1"]
        s.sendall(frame(make_message("NO1", facility="STRANGER")))
        ack = read_frame(s)
        assert msa(ack)[1:3] == ["AR", "NO1"]
    with sqlite_app.engine.connect() as conn:
        rows = {r.resource_id.split("|")[0]: r.status for r in conn.execute(select(STAGING))}
        assert rows == {"FAC": "pending", "rejected": "invalid"}
        assert conn.execute(select(ERRORS.c.code)).scalar_one() == "hl7.sender_not_allowed"


_FD_SCRIPT = """
import asyncio, resource, sys
sys.path.insert(0, {root!r})
from adapters.hl7v2.mllp import MLLPListener, StoreOutcome, StoreStatus

class Sink:
    def store(self, messages):
        return [StoreOutcome(StoreStatus.STORED) for _ in messages]

async def main():
    listener = MLLPListener("127.0.0.1", 0, Sink(), versions=("2.5.1",), message_types=("ADT^A08",))
    await listener.start()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    import os
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 8, hard))
    print("PORT", listener.bound_port, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_out_of_file_descriptors_is_logged_once_per_interval(tmp_path: Path) -> None:
    script = tmp_path / "fd_listener.py"
    script.write_text(_FD_SCRIPT.format(root=str(ROOT)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    clients: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        head = [proc.stdout.readline() for _ in range(2)]
        port = int(next(line for line in head if line.startswith("PORT")).split()[1])
        for _ in range(40):  # far past the listener's descriptors
            with contextlib.suppress(OSError):
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        time.sleep(3.5)  # asyncio retries accept() every second: three or more failures
    finally:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
        for c in clients:
            c.close()
    assert out.count("hl7.mllp_accept_failed") == 1, out
    assert "out of system resource" not in out


def test_listener_settings_reach_the_listener_and_counters_read_flat(sqlite_app: App) -> None:
    from registry_adapter.listener import build_listener

    cfg = MllpSource(type="mllp", name="m", max_connections=5, max_buffer_bytes=2048,
                     allowed_senders=["EPIC|MAIN"])
    listener = build_listener(sqlite_app, cfg, port=0)
    assert (listener._max_connections, listener._max_buffer_bytes) == (5, 2048)
    assert listener._allowed == {"EPIC|MAIN"} and listener._idle_timeout == 300
    COUNTERS.acks["AR"] += 0  # a code seen at least once appears as acks_<code>
    flat = COUNTERS.snapshot()
    assert {"connections_open", "connections_refused", "oversize", "acks_undelivered"} <= set(flat)
    assert all(isinstance(v, int) for v in flat.values()) and "acks_AR" in flat
