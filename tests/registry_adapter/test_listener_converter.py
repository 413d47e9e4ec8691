"""The listener converts in a child process, so conversion never holds the GIL its ACKs need."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from adapters.hl7v2.header import read_header
from adapters.hl7v2.mllp import InboundMessage
from registry_adapter.app import App
from registry_adapter.listener import _Converter, _in_memory
from registry_store.hl7_sink import StagingSink
from tests.registry_adapter.test_hl7_flow import bar_p01


def _pid() -> int:
    return os.getpid()


def test_conversion_runs_in_a_child_process_and_maps_what_was_staged(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    raw = bar_p01("CHILD-1", "MRN-1", "V-1", "22633", "20250301081500").encode()
    StagingSink(app.engine, "mllp").store(
        [InboundMessage(raw, read_header(raw, versions=(), message_types=()), None, datetime.now(UTC), "t")]
    )
    converter = _Converter(app, "mllp")

    async def rounds() -> tuple[int, int, int]:
        first = await converter.run()
        again = await converter.run()  # the same child: nothing left
        assert converter._pool is not None
        child = await asyncio.get_running_loop().run_in_executor(converter._pool, _pid)
        return first.mapped, again.mapped, child

    try:
        mapped, mapped_again, child = asyncio.run(rounds())
    finally:
        converter.close()
    assert mapped >= 1 and mapped_again == 0
    assert child != os.getpid()


@pytest.mark.parametrize(
    ("url", "memory"),
    [("sqlite://", True), ("sqlite:///:memory:", True), ("sqlite:///file:x?mode=memory&uri=true", True),
     ("sqlite:////tmp/registry.db", False), ("postgresql://u@127.0.0.1/db", False)],
)
def test_only_an_in_memory_store_converts_in_a_thread(url: str, memory: bool) -> None:
    assert _in_memory(url) is memory
