"""The MLLP listener as a service: durable ACKs now, conversion and mapping in batches.

Messages are staged and acknowledged by ``adapters.hl7v2.mllp`` with ``StagingSink``; a
background task here converts what arrived every few seconds, so parsing (hl7apy costs
~20 ms a message) never sits between a message and its ACK.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
from contextlib import suppress

import structlog

from adapters.hl7v2.mllp import MLLPListener
from registry_adapter.app import App
from registry_adapter.config import MllpSource
from registry_adapter.pipeline import Pipeline
from registry_store.hl7_sink import StagingSink

log = structlog.get_logger(__name__)


def tls_context(cfg: MllpSource) -> ssl.SSLContext | None:
    if not cfg.tls_cert_file or not cfg.tls_key_file:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
    return ctx


def build_listener(app: App, cfg: MllpSource, *, port: int | None = None) -> MLLPListener:
    return MLLPListener(
        cfg.host,
        cfg.port if port is None else port,
        StagingSink(app.engine, cfg.name),
        tls=tls_context(cfg),
        max_message_bytes=cfg.max_message_bytes,
    )


async def _convert_loop(app: App, cfg: MllpSource, stop: asyncio.Event) -> None:
    pipeline = Pipeline(app)
    while not stop.is_set():
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=cfg.convert_every_seconds)
        try:
            counts = await asyncio.to_thread(pipeline.map_pending, [cfg.name])
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
    for sig in (signal.SIGTERM, signal.SIGINT):
        with suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    listener = build_listener(app, cfg, port=port)
    await listener.start()
    log.info("hl7.listen", source=cfg.name, host=cfg.host, port=listener.bound_port)
    converter = asyncio.create_task(_convert_loop(app, cfg, stop))
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await listener.close()
        await converter
        # Whatever arrived last is converted before the process ends.
        await asyncio.to_thread(Pipeline(app).map_pending, [cfg.name])
        log.info("hl7.stopped", source=cfg.name)
