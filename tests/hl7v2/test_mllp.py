"""The MLLP listener against real clients (python-hl7's mllp_send, raw sockets) and a real
SQLite sink: ACK only after storage, dedup, faults."""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from adapters.hl7v2.framing import frame
from adapters.hl7v2.header import HeaderCheckError, read_header
from tests.hl7v2.conftest import (
    MALFORMED,
    MESSAGES,
    ListenerThread,
    connect,
    err,
    make_message,
    msa,
    read_frame,
)
from tests.hl7v2.sqlite_sink import SQLiteSink

MLLP_SEND = Path(sys.executable).parent / "mllp_send"


def _mllp_send(port: int, path: Path, *, loose: bool) -> list[str]:
    assert MLLP_SEND.exists() or shutil.which("mllp_send"), "python-hl7 mllp_send not installed"
    cmd = [str(MLLP_SEND), "--port", str(port), "--file", str(path), "127.0.0.1"]
    if loose:
        cmd.insert(1, "--loose")
    out = subprocess.run(cmd, capture_output=True, timeout=60, check=True)
    # mllp_send prints each ACK (segments separated by \r) followed by a newline.
    return [line for line in out.stdout.decode().split("\n") if line.strip()]


def test_mllp_send_plain_file_all_acked_and_stored(listener: ListenerThread, tmp_path: Path) -> None:
    # Samples with distinct (MSH-4, MSH-10): many FHIR-Converter samples share MSG00001.
    seen: set[tuple[str, str]] = set()
    names = []
    for p in sorted(MESSAGES.glob("*.hl7")):
        try:
            h = read_header(p.read_bytes())
        except HeaderCheckError:
            continue
        if (h.sending_facility, h.control_id) not in seen:
            seen.add((h.sending_facility, h.control_id))
            names.append(p.name)
    assert len(names) >= 8
    # A plain file of several messages with \n line endings, as --loose reads them.
    data = b"\n".join(
        (MESSAGES / n).read_bytes().lstrip(b"\xef\xbb\xbf").replace(b"\r\n", b"\n")
        .replace(b"\r", b"\n").rstrip(b"\n") for n in names
    ) + b"\n"
    f = tmp_path / "batch.hl7"
    f.write_bytes(data)
    acks = _mllp_send(listener.port, f, loose=True)
    assert len(acks) == len(names)
    assert all("MSA|AA|" in a for a in acks)
    rows = listener.sink.rows()
    assert [r[2] for r in rows] == ["stored"] * len(names)
    assert {(r[0], r[1]) for r in rows} == seen


def test_mllp_send_framed_file_and_duplicate(listener: ListenerThread, tmp_path: Path) -> None:
    m1, m2 = make_message("C1"), make_message("C2")
    f = tmp_path / "framed.hl7"
    f.write_bytes(frame(m1) + frame(m2) + frame(m1))  # third is a resend of the first
    acks = _mllp_send(listener.port, f, loose=False)
    assert len(acks) == 3 and all("MSA|AA|" in a for a in acks)
    msas = [next(s for s in a.split("\r") if s.startswith("MSA")) for a in acks]
    assert msas == ["MSA|AA|C1", "MSA|AA|C2", "MSA|AA|C1"]
    rows = listener.sink.rows()
    assert [(r[1], r[2]) for r in rows] == [("C1", "stored"), ("C2", "stored")]


def test_same_control_id_other_facility_is_not_a_duplicate(listener: ListenerThread) -> None:
    with connect(listener.port) as s:
        for fac in ("FAC_A", "FAC_B", "FAC_A"):
            s.sendall(frame(make_message("SAME", facility=fac)))
            assert msa(read_frame(s))[1] == "AA"
    assert sorted((r[0], r[1]) for r in listener.sink.rows()) == [
        ("FAC_A", "SAME"), ("FAC_B", "SAME")
    ]


@pytest.mark.parametrize(
    ("fixture", "ack_code", "err_code", "reason"),
    [
        ("missing_control_id.hl7", "AE", "101", "hl7.missing_control_id"),
        ("unknown_version.hl7", "AR", "203", "hl7.unsupported_version"),
        ("no_msh.hl7", "AR", "100", "hl7.no_msh"),
        ("z_segments_only.hl7", "AR", "200", "hl7.unsupported_message"),
        ("wrong_field_separator.hl7", "AR", "102", "hl7.bad_separator"),
    ],
)
def test_header_errors_are_nakked_with_err_and_kept(
    listener: ListenerThread, fixture: str, ack_code: str, err_code: str, reason: str
) -> None:
    raw = (MALFORMED / fixture).read_bytes()
    with connect(listener.port) as s:
        s.sendall(frame(raw))
        ack = read_frame(s)
    assert msa(ack)[1] == ack_code
    e = err(ack)
    assert e is not None and f"|{err_code}^" in e
    rows = listener.sink.rows()
    assert len(rows) == 1
    assert rows[0][2:4] == ("rejected", reason)
    assert rows[0][4] == raw  # kept byte for byte


def test_split_and_joined_reads(listener: ListenerThread) -> None:
    msgs = [make_message(f"S{i}") for i in range(6)]
    stream = b"".join(frame(m) for m in msgs)
    with connect(listener.port) as s:
        # First three frames byte by byte in odd chunks, then three joined in one write.
        first = b"".join(frame(m) for m in msgs[:3])
        for i in range(0, len(first), 7):
            s.sendall(first[i : i + 7])
            time.sleep(0.0005)
        acks = [read_frame(s) for _ in range(3)]
        s.sendall(stream[len(first) :])
        acks += [read_frame(s) for _ in range(3)]
    assert [msa(a)[2] for a in acks] == [f"S{i}" for i in range(6)]
    assert [r[1] for r in listener.sink.rows()] == [f"S{i}" for i in range(6)]


def test_garbage_between_frames_is_skipped(listener: ListenerThread) -> None:
    with connect(listener.port) as s:
        s.sendall(b"\x00\xffjunk\r\n" + frame(make_message("G1")) + b"more junk"
                  + frame(make_message("G2")))
        acks = [read_frame(s), read_frame(s)]
    assert [msa(a)[1:3] for a in acks] == [["AA", "G1"], ["AA", "G2"]]
    assert [r[1] for r in listener.sink.rows()] == ["G1", "G2"]


def test_connection_dropped_mid_message_stores_and_acks_nothing(
    listener: ListenerThread,
) -> None:
    m = frame(make_message("DROP"))
    with connect(listener.port) as s:
        s.sendall(m[: len(m) // 2])
        time.sleep(0.2)
    # The listener saw EOF inside a frame; a later full send on a new connection works.
    with connect(listener.port) as s2:
        s2.sendall(frame(make_message("AFTER")))
        assert msa(read_frame(s2))[1:3] == ["AA", "AFTER"]
    assert [r[1] for r in listener.sink.rows()] == ["AFTER"]


def test_ten_megabyte_message_accepted(listener: ListenerThread) -> None:
    big = make_message("BIG", body_bytes=10 * 1024 * 1024)
    with connect(listener.port, timeout=60) as s:
        s.sendall(frame(big))
        ack = read_frame(s)
    assert msa(ack)[1:3] == ["AA", "BIG"]
    rows = listener.sink.rows()
    assert rows[0][1] == "BIG" and rows[0][4] == big


def test_message_over_limit_nakked_and_connection_closed(sink: SQLiteSink) -> None:
    with ListenerThread(sink, max_message_bytes=1024 * 1024) as lt, connect(lt.port) as s:
        big = make_message("HUGE", body_bytes=2 * 1024 * 1024)
        # The server may close while we are still sending.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(frame(big))
        ack = read_frame(s)
        assert msa(ack)[1:3] == ["AR", "HUGE"]
        assert "limit" in (err(ack) or "")
        # Then the server closes the connection.
        s.settimeout(5)
        try:
            rest = s.recv(1024)
            while rest:
                rest = s.recv(1024)
        except ConnectionResetError:
            pass
        # Only the header's worth is kept, as a rejected message, so feed health shows it.
        [row] = sink.rows()
        assert row[1:4] == ("HUGE", "rejected", "hl7.message_too_large")
        assert len(row[4]) <= 4096 and big.startswith(row[4])


def test_thousand_messages_over_twenty_connections(listener: ListenerThread) -> None:
    n_conn, per_conn = 20, 50
    results: dict[int, list[list[str]]] = {}

    def client(c: int) -> None:
        with connect(listener.port) as s:
            acks = []
            for i in range(per_conn):
                s.sendall(frame(make_message(f"K{c}-{i}")))
                acks.append(msa(read_frame(s)))
            results[c] = acks

    threads = [threading.Thread(target=client, args=(c,)) for c in range(n_conn)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == n_conn
    for c, acks in results.items():
        assert [a[1:3] for a in acks] == [["AA", f"K{c}-{i}"] for i in range(per_conn)]
    rows = listener.sink.rows()
    ids = [r[1] for r in rows]
    assert len(ids) == n_conn * per_conn == len(set(ids))
    # Group commit happened: fewer store() calls than messages.
    assert listener.sink.calls < n_conn * per_conn


def test_sink_failure_nakks_for_resend(tmp_path: Path) -> None:
    class FailingSink(SQLiteSink):
        def store(self, messages):  # type: ignore[no-untyped-def]
            raise OSError("disk full")

    sink = FailingSink(tmp_path / "x.db")
    with ListenerThread(sink) as lt, connect(lt.port) as s:
        s.sendall(frame(make_message("F1")))
        ack = read_frame(s)
    assert msa(ack)[1] == "AR"
    assert "|207^" in (err(ack) or "")
    sink.close()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls(sink: SQLiteSink, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    with ListenerThread(sink, tls=server_ctx) as lt:
        raw = socket.create_connection(("127.0.0.1", lt.port), timeout=10)
        with client_ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(frame(make_message("TLS1")))
            assert msa(read_frame(s))[1:3] == ["AA", "TLS1"]
    assert [r[1] for r in sink.rows()] == ["TLS1"]


def test_idle_connection_closed_after_timeout(sink: SQLiteSink) -> None:
    with ListenerThread(sink, idle_timeout=0.3) as lt, connect(lt.port) as s:
        s.sendall(frame(make_message("I1")))
        assert msa(read_frame(s))[1] == "AA"
        t0 = time.monotonic()
        assert s.recv(1024) == b""  # closed by the listener
        assert 0.2 < time.monotonic() - t0 < 5


@pytest.mark.parametrize(
    ("msg_type", "ack_code", "err_code"),
    [
        ("ADT^A02^ADT_A02", "AA", None),   # transfer: updates the stay
        ("ADT^A40^ADT_A39", "AA", None),   # merge patient
        ("ADT^A47^ADT_A30", "AA", None),   # change identifier
        ("ADT^A99^ADT_A01", "AR", "201"),  # an event we do not know stays rejected, with why
    ],
)
def test_merge_and_transfer_events_are_accepted_unknown_events_rejected(
    listener: ListenerThread, msg_type: str, ack_code: str, err_code: str | None
) -> None:
    with connect(listener.port) as s:
        s.sendall(frame(make_message("EV1", msg_type=msg_type)))
        ack = read_frame(s)
    assert msa(ack)[1] == ack_code
    e = err(ack)
    if err_code is None:
        assert e is None
        return
    assert e is not None and f"|{err_code}^" in e and "MSH-9" in ack.decode()
    assert listener.sink.rows()[0][2:4] == ("rejected", "hl7.unsupported_message")
