"""The listener's faults against the real registry store: ``StagingSink`` on SQLite and
PostgreSQL, asserting staging rows. Nothing acknowledged is lost; nothing is staged twice."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from adapters.hl7v2.framing import frame
from adapters.hl7v2.records import HL7_TYPE
from registry_adapter.app import App
from registry_store.hl7_sink import StagingSink
from registry_store.tables import HL7_ACKS as ACKS
from registry_store.tables import STAGING
from tests.hl7v2.conftest import ListenerThread, connect, make_message, msa, read_frame
from tests.hl7v2.test_mllp import MLLP_SEND

SOURCE = "mllp"


@pytest.fixture
def staging_listener(app: App) -> Iterator[ListenerThread[StagingSink]]:
    with ListenerThread(StagingSink(app.engine, SOURCE)) as lt:
        yield lt


def staged(app: App) -> list[Any]:
    with app.engine.connect() as conn:
        return list(
            conn.execute(
                select(STAGING.c.resource_id, STAGING.c.status, STAGING.c.raw)
                .where(STAGING.c.source == SOURCE, STAGING.c.resource_type == HL7_TYPE)
                .order_by(STAGING.c.id)
            )
        )


def ack_codes(app: App) -> list[str]:
    with app.engine.connect() as conn:
        return list(conn.execute(select(ACKS.c.ack_code).order_by(ACKS.c.id)).scalars())


def test_connection_dropped_mid_message_stages_nothing(
    app: App, staging_listener: ListenerThread[StagingSink]
) -> None:
    m = frame(make_message("DROP"))
    with connect(staging_listener.port) as s:
        s.sendall(m[: len(m) // 2])
        time.sleep(0.2)
    with connect(staging_listener.port) as s2:
        s2.sendall(frame(make_message("AFTER")))
        assert msa(read_frame(s2))[1:3] == ["AA", "AFTER"]
    # The half message is neither staged nor acknowledged; the sender resends it.
    assert [(r.resource_id, r.status) for r in staged(app)] == [("FAC|AFTER", "pending")]
    assert ack_codes(app) == ["AA"]


def test_ten_megabyte_message_staged_byte_for_byte(
    app: App, staging_listener: ListenerThread[StagingSink]
) -> None:
    big = make_message("BIG", body_bytes=10 * 1024 * 1024)
    with connect(staging_listener.port, timeout=120) as s:
        s.sendall(frame(big))
        assert msa(read_frame(s))[1:3] == ["AA", "BIG"]
    (row,) = staged(app)
    assert row.resource_id == "FAC|BIG" and row.status == "pending" and bytes(row.raw) == big


def test_thousand_messages_over_twenty_connections_staged_once_each(
    app: App, staging_listener: ListenerThread[StagingSink]
) -> None:
    n_conn, per_conn = 20, 50
    results: dict[int, list[list[str]]] = {}

    def client(c: int) -> None:
        with connect(staging_listener.port, timeout=60) as s:
            acks = []
            for i in range(per_conn):
                s.sendall(frame(make_message(f"K{c}-{i}")))
                acks.append(msa(read_frame(s)))
            # The last one again, restamped as a retrying engine would: acknowledged only.
            s.sendall(frame(make_message(f"K{c}-{per_conn - 1}").replace(
                b"|20250101120000||", b"|20250101120500||", 1)))
            acks.append(msa(read_frame(s)))
            results[c] = acks

    threads = [threading.Thread(target=client, args=(c,)) for c in range(n_conn)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(results) == n_conn
    for c, acks in results.items():
        expected = [f"K{c}-{i}" for i in range(per_conn)] + [f"K{c}-{per_conn - 1}"]
        assert [a[1:3] for a in acks] == [["AA", cid] for cid in expected]
    rows = staged(app)
    assert sorted(r.resource_id for r in rows) == sorted(
        f"FAC|K{c}-{i}" for c in range(n_conn) for i in range(per_conn)
    )
    assert {r.status for r in rows} == {"pending"}
    assert ack_codes(app) == ["AA"] * (n_conn * (per_conn + 1))
    # Group commit: fewer transactions than messages.
    assert staging_listener.listener.writer.batches < n_conn * (per_conn + 1)


def test_mllp_send_resend_and_restamped_retransmission_staged_once(
    app: App, staging_listener: ListenerThread[StagingSink], tmp_path: Path
) -> None:
    m1, m2 = make_message("C1"), make_message("C2")
    m1_retry = m1.replace(b"|20250101120000||", b"|20250101121500||", 1)
    reused = make_message("C2", body_bytes=10)  # other content, same control id
    f = tmp_path / "framed.hl7"
    f.write_bytes(frame(m1) + frame(m2) + frame(m1) + frame(m1_retry) + frame(reused))
    out = subprocess.run(
        [str(MLLP_SEND), "--port", str(staging_listener.port), "--file", str(f), "127.0.0.1"],
        capture_output=True, timeout=60, check=True,
    )
    acks = [line for line in out.stdout.decode().split("\n") if line.strip()]
    msas = [next(s for s in a.split("\r") if s.startswith("MSA")) for a in acks]
    assert msas == ["MSA|AA|C1", "MSA|AA|C2", "MSA|AA|C1", "MSA|AA|C1", "MSA|AA|C2"]
    rows = staged(app)
    # mllp_send strips the final segment terminator of each message it reads.
    assert [bytes(r.raw) for r in rows] == [m.rstrip(b"\r") for m in (m1, m2, reused)]
    assert [r.resource_id for r in rows][:2] == ["FAC|C1", "FAC|C2"]
    assert rows[2].resource_id.startswith("FAC|C2#")
