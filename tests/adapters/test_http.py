"""Session factory, retries and OperationOutcome errors (adapters/http.py)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from requests.adapters import HTTPAdapter

from adapters.http import (
    FhirHttpError,
    HttpConfig,
    get_with_body_retry,
    make_session,
    raise_for_fhir,
)
from tests.fhir_server.fixture import FhirTestServer

FAST = HttpConfig(timeout=(2, 5), retries=3, backoff_factor=0.01, backoff_max=0.05,
                  backoff_jitter=0.01)


def _statuses(fhir: FhirTestServer, fragment: str) -> list[int | None]:
    return [r["status"] for r in fhir.requests() if fragment in r["url"]]


def test_retry_after_is_honoured(fhir: FhirTestServer) -> None:
    fhir.fault(r"^/Patient", "503", times=1, retry_after=1)
    session = make_session(FAST)
    started = time.monotonic()
    resp = session.get(f"{fhir.base_url}/Patient", timeout=FAST.timeout)
    assert resp.status_code == 200
    assert time.monotonic() - started >= 1.0  # not the 10 ms backoff
    assert _statuses(fhir, "/Patient") == [503, 200]


@pytest.mark.parametrize("kind", ["429", "503"])
def test_retries_exhausted_give_the_outcome(fhir: FhirTestServer, kind: str) -> None:
    fhir.fault(r"^/Patient", kind, times=FAST.retries + 1)
    resp = make_session(FAST).get(f"{fhir.base_url}/Patient", timeout=FAST.timeout)
    with pytest.raises(FhirHttpError) as info:
        raise_for_fhir(resp)
    assert info.value.status == int(kind)
    assert info.value.issues[0]["code"] == ("throttled" if kind == "429" else "transient")
    assert len(_statuses(fhir, "/Patient")) == FAST.retries + 1


def test_operation_outcome_becomes_clear_error(fhir: FhirTestServer) -> None:
    resp = make_session(FAST).get(f"{fhir.base_url}/Patient/nope?identifier=MRN123",
                                  timeout=FAST.timeout)
    with pytest.raises(FhirHttpError) as info:
        raise_for_fhir(resp)
    assert str(info.value) == "HTTP 404 from /Patient/nope: error/not-found: Not found"
    assert "MRN123" not in str(info.value)  # the query is never quoted


def test_body_cut_is_retried_then_gives_up(fhir: FhirTestServer) -> None:
    fhir.seed([{"resourceType": "Patient", "id": f"p{i}"} for i in range(5)])
    session = make_session(FAST)
    fhir.fault(r"^/Patient\?", "cut", times=1, partial_bytes=50)
    resp = get_with_body_retry(session, f"{fhir.base_url}/Patient?_count=5", FAST)
    assert len(resp.json()["entry"]) == 5

    fhir.clear_requests()
    fhir.fault(r"^/Patient\?", "cut", times=FAST.retries + 1, partial_bytes=50)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get_with_body_retry(session, f"{fhir.base_url}/Patient?_count=5", FAST)
    assert len(fhir.requests()) == FAST.retries + 1


def test_connection_refused_is_retried_then_raised() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(requests.exceptions.ConnectionError):
        make_session(FAST).get(f"http://127.0.0.1:{port}/Patient", timeout=FAST.timeout)


def test_connections_are_reused(fhir: FhirTestServer) -> None:
    session = make_session(FAST)
    for _ in range(3):
        session.get(f"{fhir.base_url}/metadata-not-there", timeout=FAST.timeout)
    adapter = session.get_adapter(fhir.base_url)
    assert isinstance(adapter, HTTPAdapter)
    pool = next(iter(adapter.poolmanager.pools._container.values()))
    assert pool.num_connections == 1


# --------------------------------------------------------------------------- TLS
def _cert_pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_pem, cert_pem, key_pem = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return ca_pem, cert_pem, key_pem


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"resourceType":"Bundle","type":"searchset"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def https_url(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    ca_pem, cert_pem, key_pem = _cert_pair(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_pem, key_pem)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/Patient", ca_pem
    finally:
        server.shutdown()
        server.server_close()


def test_tls_verified_by_default_and_custom_ca_bundle(https_url: tuple[str, Path]) -> None:
    url, ca_pem = https_url
    with pytest.raises(requests.exceptions.SSLError):
        make_session(HttpConfig(retries=0)).get(url, timeout=5)
    resp = make_session(HttpConfig(retries=0, verify=str(ca_pem))).get(url, timeout=5)
    assert resp.status_code == 200
