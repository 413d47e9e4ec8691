"""Fixtures for the HL7 v2 tests: a real listener on 127.0.0.1 with a real SQLite sink."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Generic, TypeVar

import pytest

from adapters.hl7v2.mllp import MessageSink, MLLPListener
from tests.conftest import FIXTURES as ALL_FIXTURES
from tests.hl7v2.sqlite_sink import SQLiteSink

FIXTURES = ALL_FIXTURES / "hl7v2"
MESSAGES = FIXTURES / "fhir-converter" / "messages"
EXPECTED = FIXTURES / "fhir-converter" / "expected"
MALFORMED = FIXTURES / "malformed"


S = TypeVar("S", bound=MessageSink)


class ListenerThread(Generic[S]):
    """Runs an MLLPListener in its own event loop thread, as a daemon would."""

    def __init__(self, sink: S, tls: ssl.SSLContext | None = None,
                 max_message_bytes: int = 16 * 1024 * 1024,
                 idle_timeout: float | None = None) -> None:
        self.sink = sink
        self.loop = asyncio.new_event_loop()
        self.listener = MLLPListener("127.0.0.1", 0, sink, tls=tls,
                                     max_message_bytes=max_message_bytes,
                                     idle_timeout=idle_timeout)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ListenerThread[S]:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.listener.start(), self.loop).result(10)
        return self

    @property
    def port(self) -> int:
        return self.listener.bound_port

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.listener.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SQLiteSink]:
    s = SQLiteSink(tmp_path / "inbound.db")
    yield s
    s.close()


@pytest.fixture
def listener(sink: SQLiteSink) -> Iterator[ListenerThread[SQLiteSink]]:
    with ListenerThread(sink) as lt:
        yield lt


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


_pending: dict[int, bytes] = {}  # bytes read past the last frame, per socket


def read_frame(sock: socket.socket) -> bytes:
    """One MLLP frame's payload (b'' if the peer closed first). Keeps bytes of the next frame."""
    buf = _pending.pop(id(sock), b"")
    while b"\x1c\r" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        buf += chunk
    end = buf.index(b"\x1c\r")
    if buf[end + 2 :]:
        _pending[id(sock)] = buf[end + 2 :]
    assert buf.startswith(b"\x0b")
    return buf[1:end]


def msa(ack: bytes) -> list[str]:
    for seg in ack.decode().split("\r"):
        if seg.startswith("MSA|"):
            return seg.split("|")
    raise AssertionError("no MSA segment in ACK")


def err(ack: bytes) -> str | None:
    for seg in ack.decode().split("\r"):
        if seg.startswith("ERR|"):
            return seg
    return None


def make_message(control_id: str, facility: str = "FAC", body_bytes: int = 0,
                 msg_type: str = "ADT^A08^ADT_A01", version: str = "2.5.1") -> bytes:
    segs = [
        f"MSH|^~\\&|APP|{facility}|REG|SPINE|20250101120000||{msg_type}|{control_id}|P|{version}",
        "EVN|A08|20250101120000",
        "PID|1||12345^^^HOSP^MR||DOE^JANE||19700101|F",
        "PV1|1|I|||||||||||||||||V1^^^HOSP^VN|||||||||||||||||||||||||20250101080000",
    ]
    if body_bytes:
        segs.append("NTE|1||" + "x" * body_bytes)
    return ("\r".join(segs) + "\r").encode()
