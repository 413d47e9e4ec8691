"""Channels against real receivers, and a crash between delivering and recording."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
from pydantic import ValidationError
from sqlalchemy import text

from registry_adapter.app import App
from registry_store.leases import LeaseLock
from scheduler.channels import build_channels
from scheduler.channels.base import Message
from scheduler.cli import reminder_rows
from scheduler.clock import FixedClock, at_local
from scheduler.dispatcher import Dispatcher
from scheduler.queries import UNCONFIRMED
from scheduler.settings import RemindersSettings, SchedulerSettings
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


def crash_mid_email(app: App, smtp: SmtpSink, clock: FixedClock) -> None:
    """Attempt 1 reaches the SMTP server, then the process 'dies' before recording it."""
    real = build_channels(app.settings.section(RemindersSettings), clock)
    with pytest.raises(Crash):
        Dispatcher(app, clock, {"email": crash_after_send(real["email"])}).run()
    assert len(smtp.messages) == 1
    [row] = send_rows(app)
    assert (row.status, row.error) == ("pending", None)  # committed before sending


def test_email_crash_is_recorded_unconfirmed_not_resent_by_default(
    reminder_app: Callable[..., tuple[App, Feed]], smtp_server: SmtpSink, tmp_path: Path, db_url: str
) -> None:
    """SMTP cannot de-duplicate, so by default a crashed send is not sent again: the patient
    gets exactly one message, and the attempt is flagged for a coordinator to check."""
    from scheduler.channels.worklist import export_csv, worklist_rows

    app, feed = reminder_app(db_url, **reminder_config(smtp_server))  # no reminders.unconfirmed key
    assert app.settings.section(RemindersSettings).unconfirmed_policy("email") == "assume_sent"
    one_case(feed)
    clock = at_local(DUE, 9, TZ)
    crash_mid_email(app, smtp_server, clock)

    clock.advance(hours=1)
    report = Dispatcher(app, clock).run()
    assert (report.settled, report.sent) == (1, 1)
    assert len(smtp_server.messages) == 1  # exactly one message after the crash
    [row] = send_rows(app)
    assert (row.status, row.attempt, row.provider_id) == ("sent", 1, UNCONFIRMED)
    assert reminder(app).attempts == 1  # no second attempt was created

    # The flag is visible where staff look: `reminders list` and the coordinator worklist.
    with app.engine.connect() as conn:
        listed = {(r["procedure_id"], r["timepoint"]): r for r in reminder_rows(conn)}
        [item] = worklist_rows(conn)
    assert listed[("proc-1", "90d")]["unconfirmed"] is True
    assert listed[("proc-1", "1y")]["unconfirmed"] is False
    assert (item["procedure_id"], item["timepoint"], item["unconfirmed"]) == ("proc-1", "90d", True)
    out = tmp_path / "wl.csv"
    with app.engine.connect() as conn:
        assert export_csv(conn, out) == 1
    header, line = out.read_text().splitlines()
    assert header.endswith(",unconfirmed") and line.endswith(",True")

    # Nothing more until attempt 2 is due; then it goes out normally, exactly once.
    clock.advance(days=1)
    assert Dispatcher(app, clock).run().sent == 0
    clock.set(at_local(DUE + timedelta(days=7), 9, TZ).now())
    assert Dispatcher(app, clock).run().sent == 1
    assert len(smtp_server.messages) == 2
    assert [r.provider_id == UNCONFIRMED for r in send_rows(app)] == [True, False]
    with app.engine.connect() as conn:  # attempt 1 stays flagged while the time point is open
        assert [r["unconfirmed"] for r in worklist_rows(conn)] == [True]


def test_email_crash_resends_when_configured(
    reminder_app: Callable[..., tuple[App, Feed]], smtp_server: SmtpSink
) -> None:
    """``unconfirmed: {email: resend}``: at least once, the resend with the same Message-ID."""
    app, feed = reminder_app(**reminder_config(smtp_server, unconfirmed={"email": "resend"}))
    assert app.settings.section(RemindersSettings).unconfirmed == {"email": "resend", "webhook": "resend"}
    one_case(feed)
    clock = at_local(DUE, 9, TZ)
    crash_mid_email(app, smtp_server, clock)

    clock.advance(hours=1)
    report = Dispatcher(app, clock).run()
    assert (report.settled, report.sent) == (1, 1)
    ids = [m["Message-ID"] for m in smtp_server.messages]
    # Mail stores that de-duplicate by Message-ID show one message.
    assert len(ids) == 2 and len(set(ids)) == 1
    [row] = send_rows(app)
    assert (row.status, row.provider_id) == ("sent", ids[0])
    assert reminder(app).attempts == 1
    with app.engine.connect() as conn:
        assert not any(r["unconfirmed"] for r in reminder_rows(conn))
    clock.advance(days=1)
    assert Dispatcher(app, clock).run().sent == 0


def test_unconfirmed_policy_settings() -> None:
    """As written in the config file: one value for both channels, or per channel over the
    defaults; FHIR and the worklist confirm, so they take no policy."""

    def parse(value: object) -> RemindersSettings:
        return RemindersSettings.model_validate({"unconfirmed": value})

    assert RemindersSettings().unconfirmed == {"email": "assume_sent", "webhook": "resend"}
    assert parse("resend").unconfirmed == {"email": "resend", "webhook": "resend"}
    assert parse({"webhook": "assume_sent"}).unconfirmed == {"email": "assume_sent", "webhook": "assume_sent"}
    assert parse({}).unconfirmed_policy("fhir") == "resend"  # never asked: FHIR confirms
    for wrong in ({"fhir": "resend"}, {"email": "twice"}, "never"):
        with pytest.raises(ValidationError, match="unconfirmed"):
            parse(wrong)


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
        from scheduler.settings import RemindersSettings

        settings = Settings.model_validate_json(open({str(settings_json)!r}).read())
        app = build_app(settings, {app.db_url!r})
        email = build_channels(settings.section(RemindersSettings))["email"]
        real_send = email.send
        def send_then_die(msg):
            real_send(msg)
            os._exit(137)
        email.send = send_then_die
        Dispatcher(app, at_local(date(2025, 4, 9), 9, ZoneInfo("America/Chicago")), {{"email": email}}).run()
    """)
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 137, stderr[-2000:]
    assert len(smtp_server.messages) == 1
    [row] = send_rows(app)
    assert row.status == "pending"
    with app.engine.connect() as conn:  # the dead process still holds the dispatch lease
        assert conn.execute(text("SELECT pid FROM job_locks")).scalar_one() == proc.pid

    # Its holder is gone (same host, pid dead): the lease is taken over at once, not after
    # lock_ttl_seconds.
    report = Dispatcher(app, at_local(DUE, 9, TZ)).run()
    assert not report.locked
    assert (report.settled, report.sent) == (1, 1)
    assert len(smtp_server.messages) == 1  # recovered without a duplicate
    assert [(r.status, r.provider_id) for r in send_rows(app)] == [("sent", UNCONFIRMED)]


def test_lost_dispatch_lock_stops_sending(
    reminder_app: Callable[..., tuple[App, Feed]], smtp_server: SmtpSink, db_url: str
) -> None:
    """The lease lapses mid-run (a stalled send) and another process takes it: the run stops
    before its next send instead of racing the new holder."""
    app, feed = reminder_app(db_url, **reminder_config(smtp_server))
    for n in (1, 2, 3):
        feed.patient(f"pat-{n}", email=f"p{n}@example.invalid")
        feed.surgery(str(n), f"pat-{n}", date(2025, 1, 6), date(2025, 1, 9))
    feed.ingest()
    clock = at_local(DUE, 9, TZ)
    ttl = app.settings.section(SchedulerSettings).lock_ttl_seconds
    real = build_channels(app.settings.section(RemindersSettings), clock)["email"]
    thief = LeaseLock(app.engine, "reminders", ttl, clock, owner="other-host:1:thief")

    class StallsThenLosesLease:
        name: ClassVar[str] = "email"
        can_confirm: ClassVar[bool] = False

        def can_reach(self, msg: Message) -> bool:
            return real.can_reach(msg)

        def send(self, msg: Message) -> str:
            provider = real.send(msg)
            clock.advance(seconds=ttl + 1)  # this send took longer than the lease...
            assert thief.acquire()  # ...and another dispatcher took the lapsed lease
            return provider

        def confirm(self, msg: Message) -> str | None:
            return real.confirm(msg)

    report = Dispatcher(app, clock, {"email": StallsThenLosesLease()}).run()
    assert report.lock_lost and report.sent == 1
    assert len(smtp_server.messages) == 1
    with app.engine.connect() as conn:
        attempts = conn.execute(text("SELECT sum(attempts) FROM reminders")).scalar_one()
        holder = conn.execute(text("SELECT owner FROM job_locks WHERE name = 'reminders'")).scalar_one()
    assert attempts == 1  # the other two were not even claimed
    assert holder == thief.owner  # leaving did not release the new holder's lease

    # While the new holder has it, nobody else sends; once it is done, the rest go out.
    assert Dispatcher(app, clock).run().locked
    thief.release()
    again = Dispatcher(app, clock).run()
    assert (again.sent, again.lock_lost) == (2, False)
    assert len(smtp_server.messages) == 3


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
    real = build_channels(app.settings.section(RemindersSettings))
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


def fhir_resources(server: FhirTestServer, rtype: str, identifier: str | None = None) -> list[dict[str, Any]]:
    params = {"identifier": identifier} if identifier else {}
    bundle = requests.get(f"{server.base_url}/{rtype}", params=params, timeout=30).json()
    return [e["resource"] for e in bundle.get("entry") or []]


def fhir_count(server: FhirTestServer, identifier: str | None = None) -> int:
    return len(fhir_resources(server, "CommunicationRequest", identifier))


def test_fhir_communication_request_confirmed_after_crash(
    reminder_app: Callable[..., tuple[App, Feed]], fhir: FhirTestServer
) -> None:
    app, feed = reminder_app(**reminder_config(channels=["fhir"], fhir={"base_url": fhir.base_url}))
    one_case(feed)
    clock = at_local(DUE, 9, TZ)
    real = build_channels(app.settings.section(RemindersSettings), clock)
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
    # Stamped with the dispatcher's clock (09:00 Chicago on the due date), not the wall clock.
    assert datetime.fromisoformat(cr["authoredOn"]) == datetime(2025, 4, 9, 14, tzinfo=UTC)
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


def test_fhir_task_created_once_and_confirmed_after_crash(
    reminder_app: Callable[..., tuple[App, Feed]], fhir: FhirTestServer
) -> None:
    """``fhir.resource: Task`` on the real FHIR server: conditional create, confirm by search."""
    app, feed = reminder_app(
        **reminder_config(channels=["fhir"], fhir={"base_url": fhir.base_url, "resource": "Task"})
    )
    one_case(feed)
    clock = at_local(DUE, 9, TZ)
    real = build_channels(app.settings.section(RemindersSettings), clock)
    with pytest.raises(Crash):
        Dispatcher(app, clock, {"fhir": crash_after_send(real["fhir"])}).run()
    [task] = fhir_resources(fhir, "Task")
    assert fhir_resources(fhir, "CommunicationRequest") == []

    fhir.clear_requests()
    clock.advance(hours=1)
    report = Dispatcher(app, clock).run()
    assert (report.settled, report.sent) == (1, 1)
    assert [(r["method"], r["url"].split("?")[0]) for r in fhir.requests()] == [("GET", "/Task")]
    [row] = send_rows(app)
    assert (row.status, row.provider_id) == ("sent", task["id"])
    assert len(fhir_resources(fhir, "Task")) == 1

    assert (task["status"], task["intent"], task["priority"]) == ("requested", "order", "routine")
    assert task["for"] == {"reference": "Patient/pat-1"}
    assert task["focus"] == {"reference": "Procedure/proc-1"}
    assert task["restriction"]["period"] == {"end": "2025-07-08"}
    assert "three-month" in task["description"]
    assert datetime.fromisoformat(task["authoredOn"]) == datetime(2025, 4, 9, 14, tzinfo=UTC)
    ident = task["identifier"][0]
    assert ident["system"] == "urn:spine-registry-adapter:reminder" and "proc-1" not in ident["value"]
    key = f"{ident['system']}|{ident['value']}"
    assert [t["id"] for t in fhir_resources(fhir, "Task", key)] == [task["id"]]

    # Attempt 2 a week later is a second Task with its own identifier, stamped a week later.
    clock.set(at_local(DUE + timedelta(days=7), 9, TZ).now())
    assert Dispatcher(app, clock).run().sent == 1
    tasks = fhir_resources(fhir, "Task")
    assert len(tasks) == 2 and len({t["identifier"][0]["value"] for t in tasks}) == 2
    second = next(t for t in tasks if t["id"] != task["id"])
    assert datetime.fromisoformat(second["authoredOn"]) == datetime(2025, 4, 16, 14, tzinfo=UTC)


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
