"""Pytest plugin: a real FHIR R4 server (Medplum's router in Node) for the whole test session.

Register with ``pytest_plugins = ["tests.fhir_server.fixture"]``
(or ``-p tests.fhir_server.fixture``).
``fhir_server`` is started once per session; ``fhir`` is the same server reset to empty for
one test. The server binds 127.0.0.1 only. Tests are skipped only when ``node`` is missing;
a failed ``npm`` install or a server that does not start is an error, not a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

SERVER_DIR = Path(__file__).resolve().parent
START_TIMEOUT_S = 90.0


class FhirTestServer:
    """Handle on the running server: its base URL and the ``/__admin/`` control API."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = requests.Session()

    def _admin(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.http.request(method, f"{self.base_url}/__admin/{path}", timeout=30, **kwargs)
        resp.raise_for_status()
        return resp.json()

    # -- state
    def reset(self) -> None:
        """Empty the repository and forget exports, faults, clients, tokens and the log."""
        self._admin("POST", "reset")

    def seed(self, resources: Iterable[dict[str, Any]], preserve_meta: bool = False) -> list[str]:
        """Load resources (kept ids are upserted); returns ``Type/id`` references.

        ``preserve_meta`` keeps the given ``meta.lastUpdated``/``versionId`` (back-dated data).
        """
        bundle = {"resourceType": "Bundle", "type": "collection",
                  "entry": [{"resource": r} for r in resources]}
        params = {"preserve_meta": "true"} if preserve_meta else {}
        return list(self._admin("POST", "seed", json=bundle, params=params)["ids"])

    def seed_ndjson(self, text: str) -> list[str]:
        headers = {"Content-Type": "application/fhir+ndjson"}
        return list(self._admin("POST", "seed", data=text.encode(), headers=headers)["ids"])

    # -- plain FHIR writes through the server's REST API (so meta is set by the server)
    def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        resp = self.http.post(f"{self.base_url}/{resource['resourceType']}", json=resource,
                              headers=self._auth_headers(), timeout=30)
        resp.raise_for_status()
        return dict(resp.json())

    def update(self, resource: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}/{resource['resourceType']}/{resource['id']}"
        resp = self.http.put(url, json=resource, headers=self._auth_headers(), timeout=30)
        resp.raise_for_status()
        return dict(resp.json())

    def delete(self, resource_type: str, resource_id: str) -> None:
        resp = self.http.delete(f"{self.base_url}/{resource_type}/{resource_id}",
                                headers=self._auth_headers(), timeout=30)
        resp.raise_for_status()

    def _auth_headers(self) -> dict[str, str]:
        # Test writes bypass auth enforcement with a static token registered for the purpose.
        return {"Authorization": "Bearer test-admin-token"}

    # -- faults
    def fault(self, path: str, kind: str, times: int = 1, method: str | None = None,
              retry_after: int | None = None, partial_bytes: int | None = None,
              status: int | None = None) -> int:
        """Inject a fault into the next ``times`` requests whose path+query matches ``path``.

        ``kind``: ``"429"``, ``"503"``, ``"status"`` (any ``status``), ``"cut"`` (real
        response, socket destroyed after ``partial_bytes``), ``"malformed"`` (real response
        truncated to invalid JSON), ``"expire_token"`` (all tokens expire now).
        """
        body: dict[str, Any] = {"path": path, "kind": kind, "times": times}
        for key, value in (("method", method), ("retry_after", retry_after),
                           ("partial_bytes", partial_bytes), ("status", status)):
            if value is not None:
                body[key] = value
        return int(self._admin("POST", "faults", json=body)["id"])

    def clear_faults(self) -> None:
        self._admin("DELETE", "faults")

    # -- auth
    def register_client(self, client_id: str, *, jwks: dict[str, Any] | None = None,
                        public_key_pem: str | None = None, kid: str | None = None,
                        client_secret: str | None = None, jku: str | None = None) -> None:
        body = {"client_id": client_id, "jwks": jwks, "public_key_pem": public_key_pem,
                "kid": kid, "client_secret": client_secret, "jku": jku}
        self._admin("POST", "clients", json={k: v for k, v in body.items() if v is not None})

    def set_auth(self, required: bool, token_lifetime: int = 300,
                 static_tokens: list[str] | None = None,
                 basic: list[dict[str, str]] | None = None) -> None:
        """Turn bearer enforcement on/off; ``test-admin-token`` always stays valid."""
        self._admin("POST", "auth", json={
            "required": required, "token_lifetime": token_lifetime,
            "static_tokens": ["test-admin-token", *(static_tokens or [])],
            "basic": basic or []})

    def expire_tokens(self) -> None:
        self._admin("POST", "expire-tokens")

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/auth/token"

    # -- bulk
    def set_bulk(self, **options: Any) -> None:
        """``polls_before_ready``, ``retry_after``, ``max_resources_per_file``, ``fail_with``,
        ``error_diagnostics`` (see server.mjs)."""
        self._admin("POST", "bulk", json=options)

    def set_config(self, **options: Any) -> None:
        """``paging``: ``"snapshot"`` (default, HAPI-like ``_getpages`` links) or ``"offset"``."""
        self._admin("POST", "config", json=options)

    # -- request log
    def requests(self) -> list[dict[str, Any]]:
        return list(self._admin("GET", "requests"))

    def clear_requests(self) -> None:
        self._admin("DELETE", "requests")


def _install(npm: str) -> None:
    cmd = [npm, "ci" if (SERVER_DIR / "package-lock.json").exists() else "install",
           "--no-audit", "--no-fund"]
    proc = subprocess.run(cmd, cwd=SERVER_DIR, capture_output=True, text=True, timeout=600,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {SERVER_DIR}:\n{proc.stderr[-4000:]}")


def _wait_for_port(proc: subprocess.Popen[str], log_path: Path) -> int:
    found: dict[str, int] = {}

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("listening ") and "port" not in found:
                found["port"] = int(line.split()[1])

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if "port" in found:
            return found["port"]
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"test FHIR server did not start; stderr:\n{log_path.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirTestServer]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the test FHIR server in tests/fhir_server "
                    "needs Node 20+")
    if not (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("node is installed but npm is not: cannot install tests/fhir_server")
        _install(npm)
    # Not a context manager: the file must outlive this block for the generator's lifetime.
    log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115
        prefix="fhir-test-server-", suffix=".log", delete=False)
    log_path = Path(log_file.name)
    # stdin is a pipe the server watches: if this process dies, the server exits too.
    proc = subprocess.Popen([node, "server.mjs", "0"], cwd=SERVER_DIR, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=log_file, text=True,
                            env={**os.environ, "NODE_ENV": "test",
                                 "FHIR_TEST_EXIT_WITH_PARENT": "1"})
    try:
        port = _wait_for_port(proc, log_path)
        server = FhirTestServer(f"http://127.0.0.1:{port}")
        server.reset()
        yield server
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log_file.close()
        log_path.unlink(missing_ok=True)


@pytest.fixture
def fhir(fhir_server: FhirTestServer) -> FhirTestServer:
    """The session's server, emptied for this test (auth off, no faults, default bulk)."""
    fhir_server.reset()
    fhir_server.set_auth(required=False)
    return fhir_server


__all__ = ["FhirTestServer", "fhir", "fhir_server"]
