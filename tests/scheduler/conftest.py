"""Fixtures for the reminder and scheduler tests: synthetic FHIR feeds through the real
pipeline, a real SMTP server (aiosmtpd) and a real HTTP webhook receiver."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from adapters.base import SourceContext
from mappings.proms import build_questionnaire_response, load_instruments
from registry_adapter.app import App
from registry_adapter.pipeline import Pipeline
from registry_adapter.sources import import_source

TZ = ZoneInfo("America/Chicago")
CPT = "http://www.ama-assn.org/go/cpt"
TOKEN_SECRET = "token-secret-for-tests-only-0123456789"
SITE_NAME = "Lakeside Spine Center"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_dt(day: date, hour: int = 10) -> str:
    return datetime.combine(day, time(hour), TZ).isoformat()


class Feed:
    """Synthetic FHIR R4 resources written as NDJSON files and ingested by the real pipeline."""

    def __init__(self, folder: Path, app: App) -> None:
        self.folder = folder
        self.app = app
        self.pending: list[dict[str, Any]] = []
        self.files = 0
        self.instruments = load_instruments()
        folder.mkdir(parents=True, exist_ok=True)

    def patient(
        self, pid: str, *, email: str | None = None, phone: str | None = None, deceased: date | None = None
    ) -> None:
        telecom = []
        if email:
            telecom.append({"system": "email", "value": email})
        if phone:
            telecom.append({"system": "phone", "value": phone})
        res: dict[str, Any] = {
            "resourceType": "Patient",
            "id": pid,
            "identifier": [
                {
                    "type": {
                        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]
                    },
                    "system": "urn:oid:2.16.840.1.113883.3.9999.1",
                    "value": f"MRN-{pid}",
                }
            ],
            "name": [{"family": "Testperson", "given": ["Robin"]}],
            "gender": "female",
            "birthDate": "1961-05-04",
            "telecom": telecom,
        }
        if deceased:
            res["deceasedDateTime"] = local_dt(deceased, 3)
        self.pending.append(res)

    def surgery(
        self,
        n: str,
        pid: str,
        day: date,
        discharge: date | None,
        *,
        codes: tuple[str, ...] = ("22633", "22842"),
        status: str = "completed",
    ) -> str:
        prid, eid = f"proc-{n}", f"enc-{n}"
        proc: dict[str, Any] = {
            "resourceType": "Procedure",
            "id": prid,
            "status": status,
            "code": {"coding": [{"system": CPT, "code": c} for c in codes]},
            "subject": {"reference": f"Patient/{pid}"},
            "performedDateTime": local_dt(day, 8),
        }
        if discharge is not None:
            self.pending.append(
                {
                    "resourceType": "Encounter",
                    "id": eid,
                    "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                    "subject": {"reference": f"Patient/{pid}"},
                    "period": {"start": local_dt(day, 6), "end": local_dt(discharge, 11)},
                }
            )
            proc["encounter"] = {"reference": f"Encounter/{eid}"}
        self.pending.append(proc)
        return prid

    def prom(self, qid: str, pid: str, instrument: str, day: date) -> None:
        inst = self.instruments[instrument]
        answers = {item.id: item.min for item in inst.definition.items}
        self.pending.append(
            build_questionnaire_response(
                inst, answers, qr_id=qid, patient_ref=f"Patient/{pid}", authored=local_dt(day)
            )
        )

    def ingest(self) -> None:
        """Write what was added since the last call as one file and run it through the pipeline."""
        self.files += 1
        path = self.folder / f"batch-{self.files:03d}.ndjson"
        path.write_text("".join(json.dumps(r) + "\n" for r in self.pending))
        self.pending.clear()
        result = Pipeline(self.app).ingest(
            import_source("feed", [path]), SourceContext(full=True), kind="import"
        )
        assert result.outcome == "succeeded"


# -- SMTP --------------------------------------------------------------------------------------


@dataclass
class SmtpSink:
    host: str
    port: int
    messages: list[EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 Message accepted for delivery"


# -- webhook -----------------------------------------------------------------------------------


@dataclass
class WebhookReceiver:
    """An SMS-gateway stand-in: records posts, honours Idempotency-Key, fails on request."""

    url: str = ""
    posts: list[dict[str, Any]] = field(default_factory=list)
    delivered: dict[str, str] = field(default_factory=dict)
    fail_next: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def webhook_server() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            key = self.headers.get("Idempotency-Key", "")
            with receiver.lock:
                receiver.posts.append(
                    {"headers": dict(self.headers), "body": body, "json": json.loads(body or b"{}")}
                )
                status = receiver.fail_next.pop(0) if receiver.fail_next else 200
                if status == 200:
                    # Like real gateways: the same key gets the same message id, sent once.
                    msg_id = receiver.delivered.setdefault(key, f"sms-{len(receiver.delivered) + 1}")
            payload = json.dumps({"id": msg_id} if status == 200 else {"error": "unavailable"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/sms"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


# -- apps --------------------------------------------------------------------------------------


def reminder_config(smtp: SmtpSink | None = None, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "enabled": True,
        "channels": ["email"],
        "site_name": SITE_NAME,
        "timepoint_labels": {"90d": "three-month", "1y": "one-year"},
        "link": {"token_secret": TOKEN_SECRET, "url_template": "https://proms.lakeside.example/r/{token}"},
    }
    if smtp is not None:
        cfg["smtp"] = {
            "host": smtp.host,
            "port": smtp.port,
            "security": "none",
            "from_address": "proms@lakeside.example",
        }
    cfg.update(overrides)
    return cfg


@pytest.fixture
def reminder_app(make_app: Callable[..., App], tmp_path: Path) -> Callable[..., tuple[App, Feed]]:
    """An App with reminders configured (no sources) and a Feed writing into it."""

    def factory(db_url: str | None = None, **reminders: Any) -> tuple[App, Feed]:
        app = make_app(db_url, sources=[], reminders=reminders)
        return app, Feed(tmp_path / f"feed-{id(app)}", app)

    return factory


def days(start: date, end: date) -> Iterator[date]:
    d = start
    while d <= end:
        yield d
        d += timedelta(days=1)
