"""``registry-adapter serve`` runs the UI with uvicorn; asked over a real socket."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.error import URLError

import pytest

from registry_adapter.app import App
from tests.conftest import ROOT, write_config_file


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_answers_healthz_and_login(tmp_path: Path) -> None:
    config = write_config_file(tmp_path)
    port = _free_port()
    cli = Path(sys.executable).with_name("registry-adapter")
    proc = subprocess.Popen(
        [str(cli), "--config", str(config), "serve", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as health:
                    assert json.load(health)["status"] == "ok"
                break
            except (URLError, ConnectionError):
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=5) as login:
            assert login.status == 200 and 'name="csrf_token"' in login.read().decode()
            cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
        # The generated session secret lives beside the SQLite database, owner-only.
        key = tmp_path / "review-session.key"
        assert key.exists() and key.stat().st_mode & 0o077 == 0
    finally:
        proc.terminate()
        proc.wait(10)


def test_daemon_finds_the_ui_only_when_enabled(make_app: Callable[..., App]) -> None:
    from scheduler.daemon import discover_services

    assert all(s.name != "review" for s in discover_services(make_app()))  # enabled: false
    port = _free_port()
    app = make_app(review={"enabled": True, "port": port, "session_secret": "k" * 40})
    [service] = [s for s in discover_services(app) if s.name == "review"]
    service.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as health:
            assert json.load(health)["status"] == "ok"
    finally:
        service.stop()
    with pytest.raises(URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_access_log_is_json_without_query_strings(
    review_app: App, capsys: pytest.CaptureFixture[str]
) -> None:
    from registry_adapter import logs
    from review.service import ReviewService

    logs.configure("json", "INFO")
    port = _free_port()
    service = ReviewService(review_app, host="127.0.0.1", port=port)
    service.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/cases?q=MRN-7654321", timeout=5) as page:
            assert page.status == 200  # the login page, after the redirect
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nowhere?mrn=MRN-7654321", timeout=5)
        with pytest.raises(urllib.error.HTTPError):  # a patient's reminder link
            urllib.request.urlopen(f"http://127.0.0.1:{port}/r/TOKEN-OF-A-PATIENT", timeout=5)
    finally:
        service.stop()
        _unconfigure_logs()
    err = capsys.readouterr().err
    assert "MRN-7654321" not in err and "TOKEN-OF-A-PATIENT" not in err
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]  # JSON, every one
    requests = {(line["path"], line["status"]) for line in lines if line["event"] == "http.request"}
    assert {("/cases", 303), ("/login", 200), ("/nowhere", 404), ("/r/[token]", 404)} <= requests
    [link] = [line for line in lines if line.get("path") == "/r/[token]"]
    assert link["client"] is None  # nor the patient's address
    assert all(line["query"] == "[redacted]" for line in lines if line.get("path") in ("/cases", "/nowhere"))


def _unconfigure_logs() -> None:
    import logging

    import structlog

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    logging.captureWarnings(False)
    structlog.reset_defaults()


def test_healthz_answers_during_a_sign_in_flood(review_app: App) -> None:
    """Password hashing runs in a small pool off the event loop: with forty sign-ins sent and
    waiting, /healthz still answers before most of them. (Hashed on the loop, each sign-in
    held it for one argon2 verification and /healthz came after all of them.)"""
    import http.client
    import select
    from urllib.parse import urlencode

    from review.service import ReviewService
    from tests.review.conftest import PASSWORDS, csrf_of

    port = _free_port()
    service = ReviewService(review_app, host="127.0.0.1", port=port)
    service.start()
    flood: list[http.client.HTTPConnection] = []
    try:
        for _ in range(40):  # a session and CSRF token each; cheap, before the flood
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/login")
            page = conn.getresponse()
            cookie = page.headers["set-cookie"].split(";", 1)[0]
            token = csrf_of(page.read().decode())
            flood.append(conn)
            body = urlencode({"username": "rita", "password": PASSWORDS["rita"], "csrf_token": token})
            headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie}
            conn.putrequest("POST", "/login")
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                conn.putheader(name, value)
            conn.endheaders()
            flood[-1]._pending_body = body  # type: ignore[attr-defined]
        for conn in flood:  # every sign-in sent before /healthz is asked
            conn.send(conn._pending_body.encode())  # type: ignore[attr-defined]
        health = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        health.request("GET", "/healthz")
        answer = health.getresponse()
        assert answer.status == 200
        answered = [c for c in flood if c.sock is not None and select.select([c.sock], [], [], 0)[0]]
        assert len(answered) < len(flood) // 2, f"{len(answered)} of {len(flood)} sign-ins came first"
        statuses = [c.getresponse().status for c in flood]
        assert statuses == [303] * len(flood)  # and every sign-in was served
    finally:
        for conn in flood:
            conn.close()
        service.stop()
