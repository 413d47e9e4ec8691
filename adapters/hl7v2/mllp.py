"""Asyncio MLLP listener whose ACK means "durably stored".

Per connection, frames are handled in order (senders are stop-and-wait; a pipelining sender
gets its ACKs in order). Each frame gets the fast MSH check (``header.read_header``) and is
handed to one writer thread that drains everything queued from all connections into one
``MessageSink.store`` call: one transaction and one fsync for many messages (group commit).
The ACK is written only after ``store`` returned for that message:

* header fine, stored or duplicate (same MSH-4 + MSH-10 and content seen before, MSH-7 aside:
  the sink decides, see ``registry_store.hl7_sink``) → AA
* header error (no MSH, empty MSH-10, unsupported version or type) → AR/AE with ERR; the
  message is still given to the sink, which keeps it as rejected, so nothing received is lost
* the sink rejects a message → AE with its reason; ``store`` raises → AR 207 (resend later),
  nothing is acknowledged as stored
* a frame over ``max_message_bytes`` → AR and the connection is closed (the frame is not
  buffered further and not stored; the log says so)
* connection dropped mid-frame → nothing stored, nothing acknowledged

Parsing and FHIR conversion happen later, off this path (``convert.convert_message``).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import ssl
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

import structlog

from adapters.hl7v2.ack import build_ack
from adapters.hl7v2.framing import Discarded, Frame, MLLPFramer, Oversize, Truncated, frame
from adapters.hl7v2.header import (
    ERR_INTERNAL,
    HeaderCheckError,
    HeaderError,
    MessageHeader,
    read_header,
)

log = structlog.get_logger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One received message, as bytes, with what the MSH check found.

    ``header_error`` set means the message is NAK'd; the sink keeps it as rejected.
    ``origin`` names the connection (``mllp:127.0.0.1:50312#17``), never message content.
    """

    raw: bytes
    header: MessageHeader | None
    header_error: HeaderError | None
    received_at: datetime
    origin: str

    @property
    def dedup_key(self) -> tuple[str, str] | None:
        """(MSH-4 sending facility, MSH-10 control id), None when MSH-10 is missing."""
        if self.header is None or not self.header.control_id:
            return None
        return (self.header.sending_facility, self.header.control_id)


class StoreStatus(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"  # kept for review, not accepted


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    status: StoreStatus
    reason: str | None = None


class MessageSink(Protocol):
    """Durable storage for received messages.

    ``store`` is called from ONE thread (never concurrently) with a batch from any number of
    connections; it must commit durably before returning and return one outcome per message,
    in order. Messages with ``header_error`` must be kept (outcome REJECTED). Raising means
    nothing of the batch was stored.
    """

    def store(self, messages: Sequence[InboundMessage]) -> Sequence[StoreOutcome]: ...


_Pending = tuple[InboundMessage, "asyncio.Future[StoreOutcome]", asyncio.AbstractEventLoop]


class GroupCommitWriter:
    """The one thread that calls ``sink.store``; batches whatever is queued when it is free."""

    def __init__(self, sink: MessageSink, max_batch: int = 1000) -> None:
        self._sink = sink
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="hl7-mllp-writer", daemon=True)
        self.batches = 0
        self.messages = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, message: InboundMessage) -> asyncio.Future[StoreOutcome]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[StoreOutcome] = loop.create_future()
        self._queue.put((message, fut, loop))
        return fut

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then end the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._store(batch)

    def _store(self, batch: list[_Pending]) -> None:
        results: list[StoreOutcome | BaseException]
        try:
            outcomes = list(self._sink.store([m for m, _, _ in batch]))
            if len(outcomes) != len(batch):
                raise RuntimeError(
                    f"sink returned {len(outcomes)} outcomes for {len(batch)} messages"
                )
            results = list(outcomes)
        except Exception as exc:
            log.error("hl7.sink_failed", batch=len(batch), error=type(exc).__name__)
            results = [exc] * len(batch)
        self.batches += 1
        self.messages += len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[StoreOutcome],
                                                             StoreOutcome | BaseException]]] = {}
        for (_, fut, loop), result in zip(batch, results, strict=True):
            by_loop.setdefault(loop, []).append((fut, result))
        for loop, items in by_loop.items():
            # One wake-up per loop and batch, not per message.
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(_resolve, items)


def _resolve(
    items: list[tuple[asyncio.Future[StoreOutcome], StoreOutcome | BaseException]],
) -> None:
    for fut, result in items:
        if fut.done():  # the connection went away meanwhile
            continue
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)


class MLLPListener:
    """MLLP over TCP (optionally TLS) feeding a ``MessageSink`` with durable ACKs."""

    def __init__(
        self,
        host: str,
        port: int,
        sink: MessageSink,
        *,
        tls: ssl.SSLContext | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        versions: Collection[str] | None = None,
        message_types: Collection[str] | None = None,
        max_batch: int = 1000,
        read_size: int = 256 * 1024,
        idle_timeout: float | None = None,
    ) -> None:
        """``idle_timeout``: close a connection silent for that many seconds (None: never;
        many senders keep one connection open for days). ``versions``/``message_types``
        default to mappings/hl7v2/messages.yaml."""
        self.host = host
        self.port = port
        self.tls = tls
        self.max_message_bytes = max_message_bytes
        self._versions = versions
        self._types = message_types
        self._writer = GroupCommitWriter(sink, max_batch)
        self._read_size = read_size
        self._idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._conn_seq = 0
        self._msg_seq = 0

    @property
    def bound_port(self) -> int:
        """The real port (useful with port=0)."""
        if self._server is None or not self._server.sockets:
            return self.port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def writer(self) -> GroupCommitWriter:
        return self._writer

    async def start(self) -> None:
        if self._versions is None or self._types is None:
            from adapters.hl7v2.config import load_config

            cfg = load_config()
            self._versions = cfg.versions if self._versions is None else self._versions
            self._types = tuple(cfg.messages) if self._types is None else self._types
        self._writer.start()
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self.port, ssl=self.tls, limit=self._read_size
        )
        log.info("hl7.mllp_listening", host=self.host, port=self.bound_port, tls=bool(self.tls))

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.to_thread(self._writer.stop)

    async def __aenter__(self) -> MLLPListener:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._handle(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conn_seq += 1
        peer = writer.get_extra_info("peername")
        conn = f"mllp:{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else f"mllp:conn{self._conn_seq}"
        framer = MLLPFramer(self.max_message_bytes)
        received = 0
        try:
            while True:
                if self._idle_timeout is None:
                    data = await reader.read(self._read_size)
                else:
                    try:
                        data = await asyncio.wait_for(reader.read(self._read_size),
                                                      self._idle_timeout)
                    except TimeoutError:
                        log.info("hl7.mllp_idle_timeout", conn=conn)
                        break
                if not data:
                    break
                for event in framer.feed(data):
                    if isinstance(event, Frame):
                        received += 1
                        ack = await self._process(event.payload, conn)
                        writer.write(frame(ack))
                        await writer.drain()
                    elif isinstance(event, Discarded):
                        log.warning("hl7.mllp_garbage", conn=conn, nbytes=event.nbytes)
                    elif isinstance(event, Truncated):
                        log.warning("hl7.mllp_truncated_frame", conn=conn, nbytes=event.nbytes)
                    elif isinstance(event, Oversize):
                        await self._reject_oversize(event, conn, writer)
                        return
            if framer.pending_bytes:
                # Connection ended inside a frame: the message is incomplete, so it is neither
                # stored nor acknowledged; the sender will resend it.
                log.warning("hl7.mllp_closed_mid_frame", conn=conn, nbytes=framer.pending_bytes)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.info("hl7.mllp_connection_lost", conn=conn, error=type(exc).__name__)
        except asyncio.CancelledError:
            pass
        finally:
            log.debug("hl7.mllp_connection_closed", conn=conn, messages=received)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _reject_oversize(
        self, event: Oversize, conn: str, writer: asyncio.StreamWriter
    ) -> None:
        header: MessageHeader | None
        try:
            header = read_header(event.prefix, versions=(), message_types=(),
                                 allowed_field_separators="|")
        except HeaderCheckError as exc:
            header = exc.error.header
        log.warning("hl7.mllp_oversize", conn=conn, limit=self.max_message_bytes,
                    control_id=header.control_id if header else None)
        ack = build_ack(header, "AR", err_code=ERR_INTERNAL, location="MSH",
                        text=f"message exceeds the {self.max_message_bytes}-byte limit; "
                             "connection closed")
        with contextlib.suppress(ConnectionError):
            writer.write(frame(ack))
            await writer.drain()

    async def _process(self, payload: bytes, conn: str) -> bytes:
        self._msg_seq += 1
        error: HeaderError | None = None
        header: MessageHeader | None
        try:
            header = read_header(payload, versions=self._versions, message_types=self._types)
        except HeaderCheckError as exc:
            error = exc.error
            header = error.header
        message = InboundMessage(payload, header, error, datetime.now(UTC),
                                 f"{conn}#{self._msg_seq}")
        try:
            outcome = await self._writer.submit(message)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Not stored (even a message we would reject must be kept): ask for a resend.
            return build_ack(header, "AR", err_code=ERR_INTERNAL, location=None,
                             text="message could not be stored; resend later")
        if error is not None:
            return build_ack(header, error.ack_code, err_code=error.err_code,
                             text=error.message, location=error.field)
        if outcome.status is StoreStatus.REJECTED:
            return build_ack(header, "AE", err_code=ERR_INTERNAL,
                             text=outcome.reason or "message rejected by the store")
        return build_ack(header, "AA")
