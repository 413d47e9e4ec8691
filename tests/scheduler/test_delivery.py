"""Channels against real receivers, and a crash between delivering and recording."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
from sqlalchemy import text

from registry_adapter.app import App
from scheduler.channels import build_channels
from scheduler.channels.base import Message
from scheduler.clock import at_local
from scheduler.dispatcher import Dispatcher
from tests.fhir_server.fixture import FhirTestServer
from tests.scheduler.conftest import TZ, Feed, SmtpSink, WebhookReceiver, reminder_config

DUE = date(2025, 4, 9)  # 90 days after a discharge on 2025-01-09


class Crash(BaseException):
    """Stands for the process dying: nothing in the dispatcher catches it."""


def crash_after_send(channel: Any) -> Any:
    """Wrap a real channel: the receiver gets the message, then the process 'dies'."""

    class Crashing:
        name: ClassVar[str] = channel.name
        can_confirm: ClassVar[bool] = channel.can_confirm

        def can_reach(self, msg: Message) -> bool:
            return bool(channel.can_reach(msg))

        def send(self, msg: Message) -> str:
            channel.send(msg)
            raise Crash

        def confirm(self, msg: Message) -> str | None:
            return channel.confirm(msg)

    return Crashing()


def one_case(feed: Feed, *, email: str | None = "one@example.invalid", phone: str | None = None) -> None:
    feed.patient("pat-1", email=email, phone=phone)
    feed.surgery("1", "pat-1", date(2025, 1, 6), date(2025, 1, 9))
    feed.ingest()


def send_rows(app: App) -> list[Any]:
    with app.engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT attempt, channel, status, tries, error, provider_id, "
                    "idempotency_key FROM reminder_sends ORDER BY id"
                )
            )
        )


def reminder(app: App) -> Any:
    with app.engine.connect() as conn:
        return conn.execute(
            text("SELECT * FROM reminders WHERE case_id = 'feed:proc-1' AND timepoint = '90d'")
        ).one()


# -- email ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["resend", "assume_sent"])
def test_email_crash_between_send_and_record(
    reminder_app: Callable[..., tuple[App, Feed]], smtp_server: SmtpSink, policy: str
) -> None:
    app, feed = reminder_app(**reminder_config(smtp_server, unconfirmed=policy))
    one_case(feed)
    clock = at_local(DUE, 9, TZ)
    real = build_channels(app.settings.reminders)
    with pytest.raises(Crash):
        Dispatcher(app, clock, {"email": crash_after_send(real["email"])}).run()
    assert len(smtp_server.messages) == 1
    [row] = send_rows(app)
    assert (row.status, row.error) == ("pending", None)  # committed before sending

    clock.advance(hours=1)
    report = Dispatcher(app, clock).run()
    assert report.settled == 1 and report.sent == 1
    [row] = send_rows(app)
    assert row.status == "sent" and row.attempt == 1
    assert reminder(app).attempts == 1  # no second attempt was created
    ids = [m["Message-ID"] for m in smtp_server.messages]
    if policy == "resend":
        # At least once toward SMTP: the resend carries the same Message-ID, so mail stores
        # that de-duplicate by Message-ID show one message.
        assert len(ids) == 2 and len(set(ids)) == 1
        assert row.provider_id == ids[0]
    else:
        assert len(ids) == 1 and row.provider_id == "unconfirmed"

    # Nothing more until attempt 2 is due.
    clock.advance(days=1)
    assert Dispatcher(app, clock).run().sent == 0


def test_email_killed_process_is_recovered(
    reminder_app: Callable[..., tuple[App, Feed]], smtp_server: SmtpSink, tmp_path: Path
) -> None:
    """A real process dies (os._exit) right after the SMTP server accepted the message."""
    app, feed = reminder_app(**reminder_config(smtp_server))
    one_case(feed)
    settings_json = tmp_path / "settings.json"
    settings_json.write_text(app.settings.model_dump_json())
    script = tmp_path / "dies.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, json
        from datetime import date
        from zoneinfo import ZoneInfo
        from registry_adapter.app import build_app
        from registry_adapter.config import Settings
        from scheduler.channels import build_channels
        from scheduler.clock import at_local
        from scheduler.dispatcher import Dispatcher

        settings = Settings.model_validate_json(open({str(settings_json)!r}).read())
        app = build_app(settings, {app.db_url!r})
        email = build_channels(settings.reminders)["email"]
        real_send = email.send
        def send_then_die(msg):
            real_send(msg)
            os._exit(137)
        email.send = send_then_die
        Dispatcher(app, at_local(date(2025, 4, 9), 9, ZoneInfo("America/Chicago")), {{"email": email}}).run()
    """)
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert len(smtp_server.messages) == 1
    [row] = send_rows(app)
    assert row.status == "pending"
    with app.engine.connect() as conn:  # the dead process still holds the dispatch lease
        assert conn.execute(text("SELECT count(*) FROM job_locks")).scalar_one() == 1

    clock = at_local(DUE, 9, TZ)
    assert Dispatcher(app, clock).run().locked  # lease not yet expired: nobody else sends
    clock.advance(seconds=app.settings.scheduler.lock_ttl_seconds + 60)
    report = Dispatcher(app, clock).run()
    assert (report.settled, report.sent) == (1, 1)
    ids = [m["Message-ID"] for m in smtp_server.messages]
    assert len(ids) == 2 and len(set(ids)) == 1
    assert [r.status for r in send_rows(app)] == ["sent"]


# -- webhook -------------------------------------------------------------------------------------


def webhook_config(receiver: WebhookReceiver, **extra: Any) -> dict[str, Any]:
    return reminder_config(
        channels=["email", "webhook"],
        webhook={"url": receiver.url, "signing_secret": "whsec-test", "retries": 2},
        **extra,
    )


def test_webhook_signed_idempotent_and_retried(
    reminder_app: Callable[..., tuple[App, Feed]], webhook_server: WebhookReceiver
) -> None:
    app, feed = reminder_app(**webhook_config(webhook_server))
    one_case(feed, email=None, phone="+1 555 0100")  # no email: the first reachable channel is the webhook
    webhook_server.fail_next = [503]  # one transient failure, retried inside the same call
    clock = at_local(DUE, 9, TZ)
    real = build_channels(app.settings.reminders)
    with pytest.raises(Crash):
        Dispatcher(app, clock, {**real, "webhook": crash_after_send(real["webhook"])}).run()
    assert len(webhook_server.posts) == 2 and len(webhook_server.delivered) == 1

    post = webhook_server.posts[-1]
    expected_sig = hmac.new(b"whsec-test", post["body"], hashlib.sha256).hexdigest()
    assert post["headers"]["X-Signature"] == f"sha256={expected_sig}"
    key = post["headers"]["Idempotency-Key"]
    assert post["json"]["idempotency_key"] == key and post["json"]["to"] == "+1 555 0100"
    assert "proc-1" not in key and "pat-1" not in json.dumps(post["json"])
    assert "https://proms.lakeside.example/r/" in post["json"]["text"]

    clock.advance(hours=1)
    assert Dispatcher(app, clock).run().settled == 1
    # The resend reached the gateway with the same key, which delivered the SMS once.
    assert len(webhook_server.posts) == 3 and webhook_server.posts[-1]["headers"]["Idempotency-Key"] == key
    assert len(webhook_server.delivered) == 1
    [row] = send_rows(app)
    assert (row.status, row.channel, row.provider_id) == ("sent", "webhook", "sms-1")


def test_failures_back_off_then_surface(
    reminder_app: Callable[..., tuple[App, Feed]], webhook_server: WebhookReceiver, tmp_path: Path
) -> None:
    from scheduler.channels.worklist import export_csv

    app, feed = reminder_app(**webhook_config(webhook_server, max_tries=3, retry_backoff_minutes=60))
    one_case(feed, email=None, phone="+1 555 0100")
    webhook_server.fail_next = [500] * 3  # 500 is not transient for urllib3: one post per try
    clock = at_local(DUE, 9, TZ)
    d = Dispatcher(app, clock)
    assert d.run().retrying == 1
    clock.advance(minutes=30)
    d.run()
    assert len(webhook_server.posts) == 1  # backoff: not yet
    clock.advance(minutes=31)
    assert d.run().retrying == 1  # try 2, one hour after the claim
    clock.advance(hours=1)
    d.run()
    assert len(webhook_server.posts) == 2  # try 3 waits until 3 hours after the claim
    clock.advance(hours=1, minutes=1)
    assert d.run().failed == 1
    assert len(webhook_server.posts) == 3
    [row] = send_rows(app)
    assert (row.status, row.tries) == ("failed", 3)
    r = reminder(app)
    assert r.last_error == "webhook: webhook answered HTTP 500" and r.attempts == 1
    out = tmp_path / "wl.csv"
    with app.engine.connect() as conn:
        assert export_csv(conn, out) == 1
    # Attempt 2 goes out a week later as usual, and clears the error.
    clock.set(at_local(DUE + timedelta(days=7), 9, TZ).now())
    assert d.run().sent == 1
    assert reminder(app).last_error is None
    assert len(webhook_server.delivered) == 1


# -- FHIR ----------------------------------------------------------------------------------------


def fhir_count(server: FhirTestServer, identifier: str | None = None) -> int:
    params = {"identifier": identifier} if identifier else {}
    bundle = requests.get(f"{server.base_url}/CommunicationRequest", params=params, timeout=30).json()
    return len(bundle.get("entry") or [])


def test_fhir_communication_request_confirmed_after_crash(
    reminder_app: Callable[..., tuple[App, Feed]], fhir: FhirTestServer
) -> None:
    app, feed = reminder_app(**reminder_config(channels=["fhir"], fhir={"base_url": fhir.base_url}))
    one_case(feed)
    clock = at_local(DUE, 9, TZ)
    real = build_channels(app.settings.reminders)
    with pytest.raises(Crash):
        Dispatcher(app, clock, {"fhir": crash_after_send(real["fhir"])}).run()
    assert fhir_count(fhir) == 1

    fhir.clear_requests()
    clock.advance(hours=1)
    assert Dispatcher(app, clock).run().settled == 1
    # Settled by searching the identifier: one GET, no second POST.
    assert [(r["method"], r["url"].split("?")[0]) for r in fhir.requests()] == [
        ("GET", "/CommunicationRequest")
    ]
    assert fhir_count(fhir) == 1
    [row] = send_rows(app)
    assert row.status == "sent" and row.provider_id

    bundle = requests.get(f"{fhir.base_url}/CommunicationRequest", timeout=30).json()
    cr = bundle["entry"][0]["resource"]
    assert cr["id"] == row.provider_id
    assert cr["subject"]["reference"] == "Patient/pat-1"
    assert cr["about"][0]["reference"] == "Procedure/proc-1"
    assert cr["status"] == "active"
    assert cr["occurrencePeriod"] == {"start": "2025-04-09", "end": "2025-07-08"}
    ident = cr["identifier"][0]
    assert ident["system"] == "urn:spine-registry-adapter:reminder" and "proc-1" not in ident["value"]

    # Conditional create: sending the same message again finds the existing resource.
    msg_key = f"{ident['system']}|{ident['value']}"
    again = requests.post(
        f"{fhir.base_url}/CommunicationRequest",
        json={k: v for k, v in cr.items() if k not in ("id", "meta")},
        headers={"Content-Type": "application/fhir+json", "If-None-Exist": f"identifier={msg_key}"},
        timeout=30,
    )
    assert again.status_code == 200
    assert fhir_count(fhir, msg_key) == 1


# -- SMTP with TLS and authentication -------------------------------------------------------------


@pytest.fixture
def tls_cert(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # implicit TLS is TLS
@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_email_over_tls_with_login(
    reminder_app: Callable[..., tuple[App, Feed]],
    tls_cert: tuple[Path, Path],
    tmp_path: Path,
    security: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    from tests.scheduler.conftest import free_port

    cert, key = tls_cert
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(_server: Any, _session: Any, _envelope: Any, _mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"smtp-pass-from-env")

    sink = SmtpSink("127.0.0.1", free_port())
    options: dict[str, Any] = {"authenticator": authenticator, "auth_required": True}
    if security == "starttls":
        options |= {"tls_context": server_ctx, "require_starttls": True}
    else:
        options |= {"ssl_context": server_ctx, "auth_require_tls": False}
    controller = Controller(sink, hostname=sink.host, port=sink.port, **options)
    controller.start()
    try:
        monkeypatch.setenv("TEST_SMTP_PASSWORD", "smtp-pass-from-env")
        smtp = {
            "host": sink.host,
            "port": sink.port,
            "security": security,
            "username": "registry",
            "password": "${TEST_SMTP_PASSWORD}",
            "ca_file": str(cert),
            "from_address": "proms@lakeside.example",
        }
        app, feed = reminder_app(**{**reminder_config(), "smtp": smtp})
        one_case(feed)
        report = Dispatcher(app, at_local(DUE, 9, TZ)).run()
        assert report.sent == 1, send_rows(app)
    finally:
        controller.stop()
    assert logins == [(b"registry", b"smtp-pass-from-env")]
    assert len(sink.messages) == 1 and sink.messages[0]["To"] == "one@example.invalid"
