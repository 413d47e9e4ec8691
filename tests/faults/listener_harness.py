"""A real MLLP listener on the real staging sink (SQLite), run in its own loop thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from adapters.hl7v2.mllp import InboundMessage, MLLPListener, StoreOutcome
from registry_adapter.app import App
from registry_store.hl7_sink import StagingSink


class GatedSink(StagingSink):
    """The staging sink, holding each batch until the test opens the gate: the one way to make
    a peer vanish between storing a message and writing its ACK, deterministically."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrived = threading.Event()
        self.gate = threading.Event()

    def store(self, messages: Sequence[InboundMessage]) -> Sequence[StoreOutcome]:
        self.arrived.set()
        self.gate.wait(30)
        return super().store(messages)


class RunningListener:
    def __init__(self, app: App, sink: StagingSink | None = None, **options: Any) -> None:
        self.sink = sink or StagingSink(app.engine, "mllp")
        self.loop = asyncio.new_event_loop()
        self.listener = MLLPListener("127.0.0.1", 0, self.sink, **options)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> RunningListener:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.listener.start(), self.loop).result(10)
        return self

    @property
    def port(self) -> int:
        return self.listener.bound_port

    def open_connections(self) -> int:
        async def count() -> int:
            return len(self.listener._connections)

        return asyncio.run_coroutine_threadsafe(count(), self.loop).result(5)

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.listener.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
