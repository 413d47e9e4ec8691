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
* a frame over ``max_message_bytes`` → AR and the connection is closed; its first bytes
  (``framing.Oversize.prefix``, enough for MSH) are given to the sink as a rejected message, so
  ``hl7_acks`` and feed health show it; the rest is not buffered
* a sender not on ``allowed_senders`` (MSH-3/MSH-4) → AR; kept by the sink as rejected
* connection dropped mid-frame → nothing stored, nothing acknowledged
* an ACK that could not be written (the peer went away meanwhile) is reported to the sink
  (``ack_undelivered``) so the store does not claim it was answered

The listener cannot be exhausted by its peers: at most ``max_connections`` at once (more are
refused: accepted, logged, closed), an idle timeout (300 s by default), and frames still
being received count against ``max_buffer_bytes`` across all connections (the connection
that pushes past it is closed), so many slow half-sent frames cannot hold 16 MiB each. Out of
file descriptors, asyncio retries accepting every second; that is logged once per
``ACCEPT_ERROR_LOG_SECONDS`` with the number of failures, not once per failure. ``COUNTERS``
counts all of this in-process (the daemon exports it as metrics).

Parsing and FHIR conversion happen later, off this path (``convert.convert_message``).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import ssl
import threading
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

import structlog

from adapters.hl7v2.ack import ack_code_of, build_ack
from adapters.hl7v2.framing import Discarded, Frame, MLLPFramer, Oversize, Truncated, frame
from adapters.hl7v2.header import (
    ERR_INTERNAL,
    ERR_SEGMENT_SEQUENCE,
    HeaderCheckError,
    HeaderError,
    MessageHeader,
    read_header,
)
from registry_types import metrics

log = structlog.get_logger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_IDLE_TIMEOUT = 300.0
# Half-received frames of all connections together; a few maximal messages' worth.
DEFAULT_MAX_BUFFER_BYTES = 64 * 1024 * 1024
ACCEPT_ERROR_LOG_SECONDS = 60.0
# What asyncio's accept loop reports when accept() fails for lack of descriptors or memory.
_ACCEPT_ERROR = "socket.accept() out of system resource"


@dataclass(slots=True)
class ListenerCounters:
    """In-process counts of what the MLLP listeners did (all listeners of the process)."""

    connections_open: int = 0
    connections_accepted: int = 0
    connections_refused: int = 0  # over max_connections
    connections_idle_closed: int = 0
    connections_over_budget: int = 0  # closed: half-received frames over max_buffer_bytes
    accept_errors: int = 0  # accept() failed (file descriptors, memory)
    oversize: int = 0
    senders_refused: int = 0  # not on allowed_senders
    acks_undelivered: int = 0
    acks: Counter[str] = field(default_factory=Counter)  # by ACK code (AA, AE, AR)

    def snapshot(self) -> dict[str, int]:
        """Flat name → value, ``acks_AA`` style for the codes."""
        flat = {name: int(getattr(self, name)) for name in self.__slots__ if name != "acks"}
        flat.update({f"acks_{code}": n for code, n in sorted(self.acks.items())})
        return flat


COUNTERS = ListenerCounters()


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
    # The sink's record of the answer (``hl7_acks`` row), for ``ack_undelivered``.
    ack_id: int | None = None


class MessageSink(Protocol):
    """Durable storage for received messages.

    ``store`` is called from ONE thread (never concurrently) with a batch from any number of
    connections; it must commit durably before returning and return one outcome per message,
    in order. Messages with ``header_error`` must be kept (outcome REJECTED). Raising means
    nothing of the batch was stored. A sink may also have ``ack_undelivered(ack_ids)``,
    called with ``StoreOutcome.ack_id`` of answers that never reached the sender.
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
        self.sink = sink
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
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        allowed_senders: Collection[str] | None = None,
    ) -> None:
        """``idle_timeout``: close a connection silent for that many seconds (None: never).
        ``allowed_senders``: ``"MSH-3|MSH-4"`` entries (``"*|MSH-4"``: any application of
        that facility); None accepts every sender. ``versions``/``message_types`` default to
        mappings/hl7v2/messages.yaml."""
        self.host = host
        self.port = port
        self.tls = tls
        self.max_message_bytes = max_message_bytes
        self._versions = versions
        self._types = message_types
        self._writer = GroupCommitWriter(sink, max_batch)
        self._read_size = read_size
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections
        self._max_buffer_bytes = max_buffer_bytes
        self._allowed = frozenset(allowed_senders) if allowed_senders is not None else None
        self._buffered: dict[int, int] = {}  # connection number -> bytes of its open frame
        self._accept_errors_logged_at: float | None = None
        self._accept_errors_unlogged = 0
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
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()
        loop.set_exception_handler(lambda lp, ctx: self._on_loop_error(lp, ctx, previous))
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

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, object],
                       previous: object) -> None:
        """Failed accepts (out of file descriptors) logged once per interval with a count;
        everything else goes to the handler that was there before."""
        if context.get("message") != _ACCEPT_ERROR:
            if callable(previous):
                previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        COUNTERS.accept_errors += 1
        self._accept_errors_unlogged += 1
        now = time.monotonic()
        last = self._accept_errors_logged_at
        if last is None or now - last >= ACCEPT_ERROR_LOG_SECONDS:
            exc = context.get("exception")
            log.error("hl7.mllp_accept_failed", failures=self._accept_errors_unlogged,
                      error=type(exc).__name__ if exc else None,
                      open_connections=len(self._connections))
            self._accept_errors_logged_at = now
            self._accept_errors_unlogged = 0

    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self._max_connections:
            # Refused before reading anything: a peer opening connections in a loop must not
            # starve the senders already connected. Closing tells the peer at once.
            COUNTERS.connections_refused += 1
            peer = writer.get_extra_info("peername")
            log.warning("hl7.mllp_connection_refused", reason="too many connections",
                        limit=self._max_connections,
                        peer=peer[0] if isinstance(peer, tuple) else None)
            writer.close()
            return
        COUNTERS.connections_accepted += 1
        task = asyncio.create_task(self._handle(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _read(self, reader: asyncio.StreamReader, conn: str) -> bytes | None:
        """The next bytes, b"" at end of stream, None when the connection was idle too long."""
        if self._idle_timeout is None:
            return await reader.read(self._read_size)
        try:
            return await asyncio.wait_for(reader.read(self._read_size), self._idle_timeout)
        except TimeoutError:
            COUNTERS.connections_idle_closed += 1
            log.info("hl7.mllp_idle_timeout", conn=conn)
            return None

    def _over_budget(self, seq: int, framer: MLLPFramer) -> bool:
        """Account this connection's half-received frame; True if all of them together are
        over ``max_buffer_bytes``."""
        self._buffered[seq] = framer.pending_bytes
        return sum(self._buffered.values()) > self._max_buffer_bytes

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conn_seq += 1
        seq = self._conn_seq
        COUNTERS.connections_open += 1
        metrics.mllp_connection_opened()
        peer = writer.get_extra_info("peername")
        conn = f"mllp:{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else f"mllp:conn{seq}"
        framer = MLLPFramer(self.max_message_bytes)
        received = 0
        try:
            while True:
                data = await self._read(reader, conn)
                if not data:
                    break
                for event in framer.feed(data):
                    if isinstance(event, Frame):
                        received += 1
                        arrived = time.monotonic()
                        ack, ack_id = await self._process(event.payload, conn)
                        await self._deliver(writer, ack, ack_id, conn)
                        metrics.observe_mllp_message(ack_code_of(ack), time.monotonic() - arrived)
                    elif isinstance(event, Discarded):
                        log.warning("hl7.mllp_garbage", conn=conn, nbytes=event.nbytes)
                    elif isinstance(event, Truncated):
                        log.warning("hl7.mllp_truncated_frame", conn=conn, nbytes=event.nbytes)
                    elif isinstance(event, Oversize):
                        await self._reject_oversize(event, conn, writer)
                        return
                if self._over_budget(seq, framer):
                    COUNTERS.connections_over_budget += 1
                    log.warning("hl7.mllp_buffer_budget", conn=conn, nbytes=framer.pending_bytes,
                                limit=self._max_buffer_bytes)
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
            self._buffered.pop(seq, None)
            COUNTERS.connections_open -= 1
            metrics.mllp_connection_closed()
            log.debug("hl7.mllp_connection_closed", conn=conn, messages=received)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _deliver(self, writer: asyncio.StreamWriter, ack: bytes, ack_id: int | None,
                       conn: str) -> None:
        """Write one ACK; if it cannot reach the peer, tell the sink and end the connection."""
        try:
            if writer.transport.is_closing():
                raise ConnectionResetError("connection closed before the ACK was written")
            writer.write(frame(ack))
            await writer.drain()
            if writer.transport.is_closing():
                raise ConnectionResetError("connection lost while the ACK was written")
        except ConnectionError:
            COUNTERS.acks_undelivered += 1
            log.warning("hl7.mllp_ack_undelivered", conn=conn, ack_id=ack_id)
            record = getattr(self._writer.sink, "ack_undelivered", None)
            if ack_id is not None and callable(record):
                try:
                    await asyncio.to_thread(record, [ack_id])
                except Exception as exc:  # the ACK log is bookkeeping; never stop the listener
                    log.error("hl7.mllp_ack_undelivered_not_recorded", error=type(exc).__name__)
            raise

    async def _reject_oversize(
        self, event: Oversize, conn: str, writer: asyncio.StreamWriter
    ) -> None:
        """AR, and the message's first bytes kept as a rejected message, so feed health and
        ``hl7_acks`` show the oversize message (the rest was never buffered)."""
        COUNTERS.oversize += 1
        header: MessageHeader | None
        try:
            header = read_header(event.prefix, versions=(), message_types=(),
                                 allowed_field_separators="|")
        except HeaderCheckError as exc:
            header = exc.error.header
        log.warning("hl7.mllp_oversize", conn=conn, limit=self.max_message_bytes,
                    control_id=header.control_id if header else None)
        error = HeaderError(
            "hl7.message_too_large",
            f"message exceeds the {self.max_message_bytes}-byte limit; connection closed "
            f"(first {len(event.prefix)} bytes kept)",
            ERR_SEGMENT_SEQUENCE if header is None else ERR_INTERNAL,
            "AR",
            "MSH",
            header,
        )
        ack, ack_id = await self._answer(event.prefix, header, error, conn)
        with contextlib.suppress(ConnectionError):
            await self._deliver(writer, ack, ack_id, conn)

    def _sender_error(self, header: MessageHeader) -> HeaderError | None:
        """A refusal for a sender the site has not listed (when it keeps a list)."""
        if self._allowed is None:
            return None
        app, facility = header.sending_application, header.sending_facility
        if f"{app}|{facility}" in self._allowed or f"*|{facility}" in self._allowed:
            return None
        COUNTERS.senders_refused += 1
        return HeaderError("hl7.sender_not_allowed",
                           "sending application/facility (MSH-3/MSH-4) is not on this site's "
                           "list of allowed senders", ERR_INTERNAL, "AR", "MSH-4", header)

    async def _process(self, payload: bytes, conn: str) -> tuple[bytes, int | None]:
        error: HeaderError | None = None
        header: MessageHeader | None
        try:
            header = read_header(payload, versions=self._versions, message_types=self._types)
            error = self._sender_error(header)
        except HeaderCheckError as exc:
            error = exc.error
            header = error.header
        return await self._answer(payload, header, error, conn)

    async def _answer(self, payload: bytes, header: MessageHeader | None, error: HeaderError | None,
                      conn: str) -> tuple[bytes, int | None]:
        """Store the message (kept as rejected when ``error``), then build its ACK; returns
        the ACK and the sink's record of it."""
        self._msg_seq += 1
        message = InboundMessage(payload, header, error, datetime.now(UTC),
                                 f"{conn}#{self._msg_seq}")
        try:
            outcome = await self._writer.submit(message)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Not stored (even a message we would reject must be kept): ask for a resend.
            COUNTERS.acks["AR"] += 1
            return build_ack(header, "AR", err_code=ERR_INTERNAL, location=None,
                             text="message could not be stored; resend later"), None
        if error is not None:
            code, ack = error.ack_code, build_ack(header, error.ack_code, err_code=error.err_code,
                                                  text=error.message, location=error.field)
        elif outcome.status is StoreStatus.REJECTED:
            code, ack = "AE", build_ack(header, "AE", err_code=ERR_INTERNAL,
                                        text=outcome.reason or "message rejected by the store")
        else:
            code, ack = "AA", build_ack(header, "AA")
        COUNTERS.acks[code] += 1
        return ack, outcome.ack_id
