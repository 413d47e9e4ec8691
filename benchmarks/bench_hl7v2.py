"""HL7 v2 intake and conversion benchmark.

1. MLLP listener with durable ACKs, as deployed: the real listener (``registry_adapter.
   listener.build_listener``: ``MLLPListener`` + ``StagingSink`` on the registry store, SQLite
   WAL, synchronous=FULL per commit, group commit) runs in its own process; this process opens
   20 connections and sends stop-and-wait (each connection waits for its ACK before the next
   message), as real senders do. Prints msg/s, ACK latency p50/p99, the mean commit batch
   and the staging rows written.
1b. The same while conversion runs: ``registry-adapter listen`` as deployed, with a backlog of
   distinct ADT^A08s (benchmarks/v2_feed.py) already staged so that its conversion loop converts
   and maps throughout, and 20 python-hl7 ``MLLPClient`` connections (a real client we did not
   write) sending stop-and-wait. Prints msg/s, ACK p50/p99 and how much converted meanwhile.
2. Conversion per message type, side by side: the parse-only floors of hl7apy
   (parse_message, find_groups=False) and python-hl7 (hl7.parse); ``convert_message`` (v2 →
   FHIR, with and without hl7apy); and the whole way v2 → FHIR → registry rows
   (``Pipeline.map_pending`` over staged messages on SQLite: conversion, staging of the FHIR
   resources, the mapping engine, registry upserts and case assembly).

Run: .venv/bin/python benchmarks/bench_hl7v2.py [--messages 20000] [--connections 20]
     [--backlog 10000] (1b sends --messages / 2)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIXTURES = ROOT / "tests" / "fixtures" / "hl7v2" / "fhir-converter" / "messages"
LISTENER_SAMPLE = "ADT-A08-02.hl7"
CONVERT_SAMPLES = ["ADT-A08-02.hl7", "ADT-A01-01.hl7", "BAR-P01-01.hl7", "DFT-P03-02.hl7",
                   "ORU-R01-01.hl7"]


def _spine_adt() -> bytes:
    """A lean, realistic spine-surgery ADT^A08 (~0.9 KB): what a registry feed carries."""
    segs = [
        "MSH|^~\\&|EPIC|GOODHEALTH|REG|SPINE|20250301101500||ADT^A08^ADT_A01|{cid}|P|2.5.1",
        "EVN|A08|20250301101500",
        "PID|1||MRN123^^^GOODHEALTH^MR~999001234^^^SSA^SS||DOE^JANE^Q||19700101|F|||"
        "1 MAIN ST^^SPRINGFIELD^IL^62701^USA||^PRN^PH^^^217^5551234",
        "PV1|1|I|4W^401^1^GOODHEALTH||||1234^BONE^ROBERT^^^DR|||ORT||||1|||1234^BONE^ROBERT"
        "^^^DR|IN||||||||||||||||||||||||||||20250301080000|20250303120000",
        "DG1|1||M48.062^Spinal stenosis, lumbar region with neurogenic claudication^I10||"
        "20250301|A",
        "DG1|2||M43.16^Spondylolisthesis, lumbar region^I10||20250301|F",
        "PR1|1||22633^Arthrodesis, combined posterior or posterolateral technique^C4||"
        "20250301093000|||||||5678^CUTTER^SAM^^^DR^^^GOODHEALTH",
        "PR1|2||63047^Laminectomy, facetectomy and foraminotomy^C4||20250301093000|||||||"
        "5678^CUTTER^SAM^^^DR^^^GOODHEALTH",
    ]
    return "\r".join(segs).encode() + b"\r"


def _with_control_id(raw: bytes, cid: str) -> bytes:
    first, sep, rest = raw.partition(b"\r")
    fields = first.split(b"|")
    fields[9] = cid.encode()
    return b"|".join(fields) + sep + rest


# --- 1. listener -------------------------------------------------------------------------


def _app(db_dir: Path, sources: list[dict[str, Any]]) -> Any:
    """A registry App on a fresh migrated SQLite file, as ``registry-adapter`` builds it."""
    from registry_adapter.app import build_app
    from registry_adapter.config import parse_settings

    settings = parse_settings({
        "site": {"id": "bench", "timezone": "America/Chicago", "pseudonym_key": "bench-key"},
        "database": {"url": f"sqlite:///{db_dir / 'registry.db'}"},
        "logging": {"format": "json", "level": "WARNING"},
        "sources": sources,
    })
    app = build_app(settings)
    app.upgrade_db()
    return app


def _quiet() -> None:
    import logging

    import structlog

    # Per-connection debug events would cost more than the work measured.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def _serve(db_dir: str, port_q: mp.Queue, stop_q: mp.Queue) -> None:
    from sqlalchemy import func, select

    from registry_adapter.feeds.mllp import MllpSource
    from registry_adapter.listener import build_listener
    from registry_store.tables import STAGING

    _quiet()
    app = _app(Path(db_dir), [{"name": "mllp", "type": "mllp", "port": 0}])
    cfg = app.settings.source("mllp")
    assert isinstance(cfg, MllpSource)

    async def main() -> None:
        listener = build_listener(app, cfg, port=0)
        await listener.start()
        port_q.put(listener.bound_port)
        await asyncio.to_thread(stop_q.get)
        await listener.close()
        with app.engine.connect() as conn:
            rows = conn.execute(select(func.count()).select_from(STAGING)).scalar_one()
        port_q.put((listener.writer.batches, listener.writer.messages, rows))

    asyncio.run(main())
    app.engine.dispose()


async def _client(port: int, msgs: list[bytes], latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    buf = b""
    for m in msgs:
        t0 = time.perf_counter()
        writer.write(b"\x0b" + m + b"\x1c\r")
        while b"\x1c\r" not in buf:
            chunk = await reader.read(65536)
            if not chunk:
                raise ConnectionError("listener closed the connection")
            buf += chunk
        latencies.append(time.perf_counter() - t0)
        end = buf.index(b"\x1c\r")
        ack, buf = buf[:end], buf[end + 2 :]
        if b"MSA|AA|" not in ack:
            raise RuntimeError("not acknowledged AA")
    writer.close()
    await writer.wait_closed()


def bench_listener(n_messages: int, n_conn: int) -> None:
    sample = (FIXTURES / LISTENER_SAMPLE).read_bytes().replace(b"\r\n", b"\r").replace(
        b"\n", b"\r")
    ctx = mp.get_context("spawn")
    port_q, stop_q = ctx.Queue(), ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        proc = ctx.Process(target=_serve, args=(tmp, port_q, stop_q))
        proc.start()
        port = port_q.get(timeout=60)
        per_conn = n_messages // n_conn
        warm = [[_with_control_id(sample, f"W{c}-{i}") for i in range(20)] for c in range(n_conn)]
        work = [[_with_control_id(sample, f"M{c}-{i}") for i in range(per_conn)]
                for c in range(n_conn)]

        async def run(batches: list[list[bytes]]) -> tuple[float, list[float]]:
            lat: list[float] = []
            t0 = time.perf_counter()
            await asyncio.gather(*(_client(port, b, lat) for b in batches))
            return time.perf_counter() - t0, lat

        asyncio.run(run(warm))
        elapsed, lat = asyncio.run(run(work))
        stop_q.put(True)
        n_batches, n_batched, n_rows = port_q.get(timeout=60)
        proc.join(30)
    total = per_conn * n_conn
    lat.sort()
    print(f"MLLP listener + StagingSink (registry store), SQLite WAL synchronous=FULL, "
          f"{n_conn} connections stop-and-wait, "
          f"{total} messages of {len(sample)} bytes ({LISTENER_SAMPLE}):")
    print(f"  throughput      {total / elapsed:8.0f} msg/s  ({elapsed:.2f} s)")
    print(f"  ACK latency     p50 {lat[len(lat) // 2] * 1000:.2f} ms   "
          f"p99 {lat[int(len(lat) * 0.99)] * 1000:.2f} ms   max {lat[-1] * 1000:.2f} ms")
    print(f"  group commit    {n_batches} store() calls, mean batch "
          f"{n_batched / max(n_batches, 1):.1f} messages")
    print(f"  staging rows    {n_rows} (expected {total + 20 * n_conn})")


# --- 1b. listener while conversion runs ----------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _hl7_pending(engine: Any, source: str) -> int:
    from sqlalchemy import func, select

    from registry_store.tables import STAGING

    with engine.connect() as conn:
        return int(conn.execute(
            select(func.count()).select_from(STAGING).where(
                STAGING.c.source == source, STAGING.c.resource_type == "HL7v2Message",
                STAGING.c.status == "pending")
        ).scalar_one())


def _mllp_sender(port: int, msgs: list[bytes], latencies: list[float]) -> None:
    """One sender as hospitals run them: python-hl7's blocking ``MLLPClient`` (software we did
    not write), one message at a time, each waiting for its ACK."""
    from hl7.client import MLLPClient

    with MLLPClient("127.0.0.1", port) as client:
        for m in msgs:
            t0 = time.perf_counter()
            ack = client.send_message(m)
            latencies.append(time.perf_counter() - t0)
            if b"MSA|AA|" not in ack:
                raise RuntimeError("not acknowledged AA")


def bench_listener_converting(n_messages: int, n_conn: int, backlog: int) -> None:
    """``registry-adapter listen`` as deployed (its conversion loop runs map_pending in a thread
    of the listener's process, on the same SQLite file) with ``backlog`` distinct ADT^A08s
    already staged, so conversion and mapping run for the whole measurement while ``n_conn``
    python-hl7 MLLP clients send stop-and-wait."""
    import os
    import signal
    import socket
    import subprocess
    import threading
    from datetime import UTC, datetime

    import yaml

    sys.path.insert(0, str(Path(__file__).parent))
    from v2_feed import message

    from adapters.hl7v2.header import read_header
    from adapters.hl7v2.mllp import InboundMessage
    from registry_store.hl7_sink import StagingSink

    port = _free_port()
    source = {"name": "mllp", "type": "mllp", "port": port}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        app = _app(d, [source])
        (d / "config.yaml").write_text(yaml.safe_dump({
            "site": {"id": "bench", "timezone": "America/Chicago", "pseudonym_key": "bench-key"},
            "database": {"url": f"sqlite:///{d / 'registry.db'}"},
            "logging": {"format": "json", "level": "WARNING"},
            "sources": [source],
        }))
        now = datetime.now(UTC)
        for start in range(0, backlog, 1000):
            msgs = [message(i) for i in range(start, min(start + 1000, backlog))]
            StagingSink(app.engine, "mllp").store(
                [InboundMessage(m, read_header(m, versions=(), message_types=()), None, now, "bench")
                 for m in msgs])
        bin_dir = Path(sys.executable).parent
        proc = subprocess.Popen(
            [str(bin_dir / "registry-adapter"), "--config", str(d / "config.yaml"), "listen"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,  # its converting child is killed with it (killpg below)
        )
        try:
            deadline = time.monotonic() + 60
            while True:  # until it accepts connections
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("listener did not start") from None
                    time.sleep(0.2)
            while _hl7_pending(app.engine, "mllp") >= backlog:  # until conversion has begun
                if time.monotonic() > deadline:
                    raise RuntimeError("conversion did not start")
                time.sleep(0.2)
            per_conn = n_messages // n_conn
            ids = iter(range(backlog, backlog + n_conn * (per_conn + 10)))
            warm = [[message(next(ids)) for _ in range(10)] for _ in range(n_conn)]
            work = [[message(next(ids)) for _ in range(per_conn)] for _ in range(n_conn)]

            def run(batches: list[list[bytes]]) -> tuple[float, list[float]]:
                lat: list[float] = []
                threads = [threading.Thread(target=_mllp_sender, args=(port, b, lat)) for b in batches]
                t0 = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                return time.perf_counter() - t0, lat

            run(warm)
            pending0 = _hl7_pending(app.engine, "mllp")
            elapsed, lat = run(work)
            total = per_conn * n_conn
            # Converted in the window: pending before + received - pending after.
            converted = pending0 + total - _hl7_pending(app.engine, "mllp")
            left = _hl7_pending(app.engine, "mllp")
        finally:
            # The backlog left would be converted before a SIGTERM'd listener exits: not timed.
            os.killpg(proc.pid, signal.SIGKILL)
            _, _, usage = os.wait4(proc.pid, 0)
            app.engine.dispose()
    if len(lat) != total:
        raise RuntimeError(f"{total - len(lat)} messages unacknowledged")
    lat.sort()
    print(f"\nMLLP listener WHILE CONVERTING: `registry-adapter listen` (the listener and its "
          f"conversion loop, SQLite WAL synchronous=FULL) with {backlog} ADT^A08s staged "
          f"before, so conversion (in the listener's converting child) runs throughout; "
          f"{n_conn} python-hl7 MLLPClient connections stop-and-wait, {total} distinct "
          "ADT^A08s (benchmarks/v2_feed.py):")
    print(f"  throughput      {total / elapsed:8.0f} msg/s  ({elapsed:.2f} s)")
    print(f"  ACK latency     p50 {lat[len(lat) // 2] * 1000:.2f} ms   "
          f"p99 {lat[int(len(lat) * 0.99)] * 1000:.2f} ms   max {lat[-1] * 1000:.2f} ms")
    print(f"  converted meanwhile {converted} messages ({converted / elapsed:.0f} msg/s v2 -> FHIR "
          f"staged, counted per converted batch), {left} still pending at the end"
          + ("" if left else "  (backlog ran out: conversion did not run the whole time)"))
    print(f"  listener process CPU {usage.ru_utime + usage.ru_stime:.1f} s in all (its converting "
          "child not included)")


# --- 2. conversion -----------------------------------------------------------------------


def _rate(fn: Callable[[Any], object], items: Sequence[Any], repeat: int = 3) -> float:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        runs.append(time.perf_counter() - t0)
    return len(items) / statistics.median(runs)


def _to_registry_rate(raw: bytes, n: int) -> tuple[float, int, int]:
    """v2 → FHIR → registry rows: ``n`` copies (distinct control ids) staged as the listener
    stages them, then one timed ``Pipeline.map_pending``. Returns (msg/s, FHIR resources
    mapped, registry cases) so the figure can be read against what the work produced."""
    from datetime import UTC, datetime

    from adapters.hl7v2.header import read_header
    from adapters.hl7v2.mllp import InboundMessage
    from registry_adapter.pipeline import Pipeline
    from registry_store.hl7_sink import StagingSink

    with tempfile.TemporaryDirectory() as tmp:
        app = _app(Path(tmp), [])
        now = datetime.now(UTC)
        msgs = [_with_control_id(raw, f"C{i}") for i in range(n)]
        StagingSink(app.engine, "bench").store(
            [InboundMessage(m, read_header(m, versions=(), message_types=()), None, now, "bench")
             for m in msgs]
        )
        t0 = time.perf_counter()
        counts = Pipeline(app).map_pending(["bench"])
        elapsed = time.perf_counter() - t0
        app.engine.dispose()
    return n / elapsed, counts.mapped - n, counts.cases


def bench_conversion(loops: int) -> None:
    import hl7
    from hl7apy.parser import parse_message

    from adapters.hl7v2.config import load_config
    from adapters.hl7v2.convert import convert_message
    from adapters.hl7v2.parse import normalise_line_endings

    no_apy = dataclasses.replace(load_config(), hl7apy_parse=False)

    tz = ZoneInfo("America/Chicago")
    samples = {"spine ADT^A08 (synthetic)": _spine_adt().replace(b"{cid}", b"S1")}
    for name in CONVERT_SAMPLES:
        samples[name] = (FIXTURES / name).read_bytes()
    _quiet()
    print(f"\nConversion, one core; parse and convert: median of 3 runs x {loops} messages; "
          f"to registry rows: one map_pending over {loops} staged messages (SQLite):")
    print(f"  {'message':28s} {'bytes':>6s} {'segs':>5s} {'hl7apy parse':>13s} "
          f"{'python-hl7':>11s} {'v2->FHIR':>9s} {'v2->FHIR/hl7apy':>16s} "
          f"{'v2->FHIR no hl7apy':>19s} {'v2->FHIR->rows':>15s} {'resources':>9s} "
          f"{'cases':>5s}")
    for name, raw in samples.items():
        text = normalise_line_endings(raw.decode("utf-8-sig")).strip("\r")
        items = [raw] * loops
        texts = [text] * loops
        gc.collect()
        gc.freeze()
        try:
            parse_message(text, find_groups=False)
            r_apy = _rate(lambda t: parse_message(t, find_groups=False), texts)
            apy = f"{r_apy:9.0f}/s"
        except Exception as exc:  # hl7apy rejects some real segments (e.g. PRT in 2.5.1)
            r_apy, apy = float("nan"), f"{type(exc).__name__[:11]:>11s}"
        r_hl7 = _rate(hl7.parse, texts)
        r_conv = _rate(lambda b: convert_message(b, source="bench", tz=tz), items)
        r_fast = _rate(lambda b: convert_message(b, source="bench", tz=tz, cfg=no_apy), items)
        gc.unfreeze()
        r_rows, _, cases = _to_registry_rate(raw, loops)
        res = convert_message(raw, source="bench", tz=tz)
        print(f"  {name:28s} {len(raw):6d} {text.count(chr(13)) + 1:5d} {apy:>13s} "
              f"{r_hl7:8.0f}/s {r_conv:6.0f}/s {r_conv / r_apy:15.2f}x "
              f"{r_fast:16.0f}/s {r_rows:12.0f}/s {len(res.resources):9d} {cases:5d}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--connections", type=int, default=20)
    ap.add_argument("--convert-loops", type=int, default=60)
    ap.add_argument("--backlog", type=int, default=10000,
                    help="messages staged before the listener-while-converting run")
    ap.add_argument("--skip-listener", action="store_true")
    ap.add_argument("--skip-convert", action="store_true")
    args = ap.parse_args()
    if not args.skip_listener:
        bench_listener(args.messages, args.connections)
        bench_listener_converting(args.messages // 2, args.connections, args.backlog)
    if not args.skip_convert:
        bench_conversion(args.convert_loops)


if __name__ == "__main__":
    main()
