"""HL7 v2 through the command line, as hospital IT runs it (real subprocesses, real clients):
``listen`` with python-hl7's mllp_send and over TLS set in the config, ``import`` of plain and
gzipped v2 files, and ``mappings check`` / ``listen`` reading a site's own v2 mapping folder."""

from __future__ import annotations

import gzip
import json
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import create_engine, text

from adapters.hl7v2.framing import frame
from registry_adapter.config import load_settings
from registry_adapter.listener import tls_context
from tests.conftest import ROOT
from tests.hl7v2.conftest import msa, read_frame
from tests.hl7v2.test_mllp import _self_signed
from tests.registry_adapter.test_cli import EXE, run, write_config
from tests.registry_adapter.test_hl7_flow import MLLP_SEND, _free_port, bar_p01

HL7_ROWS = "SELECT resource_id, status FROM staging WHERE resource_type = 'HL7v2Message' ORDER BY id"


def mllp_config(tmp: Path, port: int, **source: Any) -> Path:
    mllp = {"name": "hospital", "type": "mllp", "host": "127.0.0.1", "port": port, **source}
    return write_config(tmp, sources=[mllp])


def query(tmp: Path, sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine(f"sqlite:///{tmp / 'registry.db'}")
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


@contextmanager
def listening(config: Path, port: int) -> Iterator[subprocess.Popen[str]]:
    """``registry-adapter listen`` in its own process; stopped with SIGTERM, as systemd does."""
    proc = subprocess.Popen(
        [EXE, "--config", str(config), "listen"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "listener did not start"
                time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err


def mllp_send(port: int, path: Path) -> list[str]:
    sent = subprocess.run(
        [MLLP_SEND, "--port", str(port), "--file", str(path), "--loose", "127.0.0.1"],
        capture_output=True, text=True, timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    return [line.split("|")[1] for ack in sent.stdout.splitlines() for line in ack.split("\r")
            if line.startswith("MSA|")]


def two_surgeries() -> str:
    return (
        bar_p01("CLI0001", "MRN-1", "V-1", "22633", "20250301081500") + "\n"
        + bar_p01("CLI0002", "MRN-2", "V-2", "22551", "20250302091500", dx="M50.12") + "\n"
    )


def test_listen_acks_after_staging_dedups_retransmissions_and_converts(tmp_path: Path) -> None:
    port = _free_port()
    cfg = mllp_config(tmp_path, port)
    batch = tmp_path / "batch.hl7"
    batch.write_text(two_surgeries())
    retry = tmp_path / "retry.hl7"  # the first one again, MSH-7 restamped by the sender
    retry.write_text(bar_p01("CLI0001", "MRN-1", "V-1", "22633", "20250301081500")
                     .replace("|20250304120000||", "|20250304121500||", 1) + "\n")
    with listening(cfg, port):
        assert mllp_send(port, batch) == ["AA", "AA"]
        assert mllp_send(port, retry) == ["AA"]
    # SIGTERM drains and converts what arrived: staged once each, mapped, cases built.
    assert query(tmp_path, HL7_ROWS) == [("SPINEHOSP|CLI0001", "mapped"), ("SPINEHOSP|CLI0002", "mapped")]
    assert query(tmp_path, "SELECT ack_code FROM hl7_acks") == [("AA",)] * 3
    cases = json.loads(run("cases", "list", "--json", config=cfg).stdout)
    assert sorted(c["category"] for c in cases) == ["acdf", "plif_tlif"]


def test_listen_over_tls_from_the_config(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    port = _free_port()
    cfg = mllp_config(tmp_path, port, tls_cert_file=str(cert), tls_key_file=str(key))
    server = tls_context(load_settings(cfg).source("hospital"))  # type: ignore[arg-type]
    assert server is not None and server.minimum_version == ssl.TLSVersion.TLSv1_2
    client = ssl.create_default_context(cafile=str(cert))
    message = bar_p01("TLS0001", "MRN-1", "V-1", "22633", "20250301081500").encode()
    with listening(cfg, port):
        with client.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                server_hostname="localhost") as s:
            s.sendall(frame(message))
            assert msa(read_frame(s))[1:3] == ["AA", "TLS0001"]
        # Plain MLLP to a TLS port gets no ACK and stages nothing.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
            plain.sendall(frame(message.replace(b"TLS0001", b"PLAIN01")))
            with suppress(ConnectionResetError, TimeoutError):
                assert read_frame(plain) == b""
    assert [r[0] for r in query(tmp_path, HL7_ROWS)] == ["SPINEHOSP|TLS0001"]


def test_import_plain_and_gzipped_v2_files(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, sources=[])
    plain = tmp_path / "from-hospital.hl7"
    plain.write_text(two_surgeries().replace("\n", "\r\n"))
    out = json.loads(run("import", "--json", str(plain), config=cfg).stdout)
    assert out["outcome"] == "succeeded"
    assert query(tmp_path, HL7_ROWS) == [("SPINEHOSP|CLI0001", "mapped"), ("SPINEHOSP|CLI0002", "mapped")]
    # Gzipped, once with a .gz name and once without: decompressed, recognised as v2.
    third = bar_p01("CLI0003", "MRN-3", "V-3", "63047", "20250303101500").encode()
    fourth = bar_p01("CLI0004", "MRN-4", "V-4", "22551", "20250304101500", dx="M50.12").encode()
    (tmp_path / "more.hl7.gz").write_bytes(gzip.compress(frame(third)))
    (tmp_path / "export.txt").write_bytes(gzip.compress(fourth))
    gzipped = [str(tmp_path / "more.hl7.gz"), str(tmp_path / "export.txt")]
    out = json.loads(run("import", "--json", *gzipped, config=cfg).stdout)
    assert out["outcome"] == "succeeded"
    rows = query(tmp_path, HL7_ROWS)
    assert [r[0] for r in rows] == [f"SPINEHOSP|CLI000{i}" for i in range(1, 5)]
    assert {r[1] for r in rows} == {"mapped"}
    assert query(tmp_path, "SELECT count(*) FROM staging WHERE status = 'invalid'") == [(0,)]
    # Importing the same file again stages nothing new.
    run("import", "--json", str(plain), config=cfg)
    assert len(query(tmp_path, HL7_ROWS)) == 4


def site_mappings(tmp: Path) -> Path:
    """A site's own mapping folder, copied from the bundled one as the docs say to start."""
    site = tmp / "site-mappings"
    shutil.copytree(ROOT / "mappings" / "views", site)
    shutil.copytree(ROOT / "mappings" / "hl7v2", site / "hl7v2")
    return site


def test_mappings_check_validates_the_v2_files_naming_them(tmp_path: Path) -> None:
    out = run("mappings", "check", config=write_config(tmp_path)).stdout
    assert "v2 message types" in out and "v2 resource mappings" in out
    site = site_mappings(tmp_path)
    resources = site / "hl7v2" / "resources.yaml"
    resources.write_text(
        resources.read_text()
        .replace("{path: name, from: PID-5, as: HumanName", "{path: name, from: PID-5, as: HumanNam", 1)
        .replace("{path: birthDate, from: PID-7,", "{path: birthDate, from: PID7,", 1)
    )
    (tmp_path / "site").mkdir()
    cfg = write_config(tmp_path / "site", mappings={"directory": str(site)})
    proc = run("mappings", "check", config=cfg, check=False)
    assert proc.returncode == 1
    errors = " ".join(proc.stderr.split())  # rich wraps long lines
    assert f"{site}/hl7v2/resources.yaml: resources.Patient.elements[3]: unknown converter" in errors
    assert "'HumanNam'" in errors
    assert "resources.Patient.elements[4].from: 'PID7' is not a field path" in errors
    # A file that does not load at all is named too.
    (site / "hl7v2" / "messages.yaml").write_text("versions: [\n")
    proc = run("mappings", "check", config=cfg, check=False)
    assert proc.returncode == 1
    assert f"{site}/hl7v2/messages.yaml: cannot read" in " ".join(proc.stderr.split())


def test_listen_uses_the_site_v2_mapping_folder(tmp_path: Path) -> None:
    site = site_mappings(tmp_path)
    messages = site / "hl7v2" / "messages.yaml"
    data = yaml.safe_load(messages.read_text())
    data["versions"] = ["2.3"]  # this site's feed is 2.3 only: a 2.5.1 message is refused
    messages.write_text(yaml.safe_dump(data))
    port = _free_port()
    cfg = write_config(tmp_path, mappings={"directory": str(site)}, sources=[
        {"name": "hospital", "type": "mllp", "host": "127.0.0.1", "port": port}])
    assert "all good" in run("mappings", "check", config=cfg).stdout
    batch = tmp_path / "batch.hl7"
    batch.write_text(two_surgeries())
    with listening(cfg, port):
        assert mllp_send(port, batch) == ["AR", "AR"]
    assert query(tmp_path, "SELECT DISTINCT code FROM mapping_errors") == [("hl7.unsupported_version",)]
