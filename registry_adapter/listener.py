"""The MLLP listener as a service: durable ACKs now, conversion and mapping in batches.

Messages are staged and acknowledged by ``adapters.hl7v2.mllp`` with ``StagingSink``; a
background task here converts what arrived every few seconds, so conversion never sits between
a message and its ACK.

The conversion runs in a child process of its own, not in a thread of the listener's: mapping
is pure-Python CPU work, and in a thread it holds the GIL the event loop and the group-commit
writer need for every ACK (measured with a backlog converting: 326 ACKs/s, p50 38 ms, against
~1,200/s with conversion idle). Only an in-memory SQLite store, which a child cannot open,
converts in a thread.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import ssl
import threading
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import suppress
from typing import TYPE_CHECKING

import structlog

from adapters.hl7v2.mllp import MLLPListener
from registry_adapter.app import App
from registry_adapter.feeds.mllp import MllpSource
from registry_adapter.pipeline import Pipeline
from registry_store.hl7_sink import StagingSink

if TYPE_CHECKING:
    from registry_adapter.config import Settings
    from registry_adapter.pipeline import RunCounts

log = structlog.get_logger(__name__)

# The converting child's pipeline (built once by its initializer: imports and mapping files
# cost ~1 s, not to be paid every round).
_CONVERTER: Pipeline | None = None
# Its batches are smaller than an import's: each batch's writes hold SQLite's write lock, and
# every ACK waits for that lock. Measured with a backlog converting (20 senders): 500 messages
# a batch gave ACK p99 ~180 ms; 250, ~80 ms for ~4 % more conversion CPU; 100, ~70 ms for ~15 %.
CONVERT_BATCH = 250
# And it yields the CPU to the ACK path: conversion is background work that catches up when
# traffic pauses, while a sender waits for every ACK (stop-and-wait).
CONVERT_NICENESS = 10


def tls_context(cfg: MllpSource) -> ssl.SSLContext | None:
    if not cfg.tls_cert_file or not cfg.tls_key_file:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
    return ctx


def idle_timeout(cfg: MllpSource) -> float | None:
    """Close connections silent this long (None: never)."""
    return cfg.idle_timeout_seconds


def build_listener(app: App, cfg: MllpSource, *, port: int | None = None) -> MLLPListener:
    return MLLPListener(
        cfg.host,
        cfg.port if port is None else port,
        StagingSink(app.engine, cfg.name),
        tls=tls_context(cfg),
        max_message_bytes=cfg.max_message_bytes,
        idle_timeout=idle_timeout(cfg),
        max_connections=cfg.max_connections,
        max_buffer_bytes=cfg.max_buffer_bytes,
        allowed_senders=cfg.allowed_senders,
    )


def _start_converter(settings: Settings, db_url: str) -> None:
    global _CONVERTER
    from registry_adapter.app import build_app

    with suppress(OSError):  # not permitted everywhere: then it converts at equal priority
        os.nice(CONVERT_NICENESS)
    _CONVERTER = Pipeline(build_app(settings, db_url))
    _CONVERTER.batch_size = min(_CONVERTER.batch_size, CONVERT_BATCH)


def _convert_pending(source: str) -> RunCounts:
    """Runs in the converting child: convert and map what ``source`` staged."""
    assert _CONVERTER is not None, "converter not started"
    return _CONVERTER.map_pending([source])


def _in_memory(db_url: str) -> bool:
    return db_url.startswith("sqlite") and (db_url.rstrip("/") in ("sqlite:", "sqlite:/", "sqlite://")
                                            or ":memory:" in db_url or "mode=memory" in db_url)


class _Converter:
    """Where the listener's conversion runs: a child process (see the module docstring),
    started on first use and again after it died."""

    def __init__(self, app: App, source: str):
        self.app = app
        self.source = source
        self._pool: Executor | None = None

    async def run(self) -> RunCounts:
        if _in_memory(self.app.db_url):
            return await asyncio.to_thread(Pipeline(self.app).map_pending, [self.source])
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_converter, initargs=(self.app.settings, self.app.db_url),
            )
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, _convert_pending, self.source
            )
        except BrokenProcessPool:
            self.close()  # the next round starts a new child; the records stay pending
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


async def _convert_loop(converter: _Converter, cfg: MllpSource, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=cfg.convert_every_seconds)
        try:
            counts = await converter.run()
        except Exception as exc:  # keep listening; the records stay pending for the next round
            log.error("hl7.convert_failed", source=cfg.name, error=type(exc).__name__)
            continue
        if counts.mapped or counts.failed:
            log.info("hl7.converted", source=cfg.name, **counts.as_dict())


async def serve(
    app: App,
    cfg: MllpSource,
    *,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    port: int | None = None,
) -> None:
    """Listen until ``stop`` is set or SIGTERM/SIGINT arrives; then drain and convert."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            with suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
    listener = build_listener(app, cfg, port=port)
    await listener.start()
    log.info("hl7.listen", source=cfg.name, host=cfg.host, port=listener.bound_port)
    converter = _Converter(app, cfg.name)
    converting = asyncio.create_task(_convert_loop(converter, cfg, stop))
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await listener.close()
        await converting
        try:
            # Whatever arrived last is converted before the process ends.
            await converter.run()
        finally:
            await asyncio.to_thread(converter.close)
        log.info("hl7.stopped", source=cfg.name)


class ListenerService:
    """The listener in its own thread and event loop, for the daemon (``registry-adapter run``)."""

    def __init__(self, app: App, cfg: MllpSource):
        self.app = app
        self.cfg = cfg
        self.name = f"mllp:{cfg.name}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            self._stop = asyncio.Event()
            started = asyncio.Event()
            task = asyncio.create_task(serve(self.app, self.cfg, stop=self._stop, ready=started))
            waiter = asyncio.create_task(started.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            ready.set()
            await task

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(main())
            except BaseException as exc:  # surfaced to start() if it happens while starting
                failure.append(exc)
                ready.set()
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise RuntimeError(f"{self.name} did not start: {type(failure[0]).__name__}") from failure[0]

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(60)


def make_service(app: App) -> ListenerService | None:
    """The daemon's hook: the configured MLLP listener, if there is one."""
    listeners = [s for s in app.settings.sources if isinstance(s, MllpSource)]
    return ListenerService(app, listeners[0]) if listeners else None
