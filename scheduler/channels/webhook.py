"""Reminders through a webhook (an SMS gateway or the site's messaging service).

A JSON POST with an ``Idempotency-Key`` header (the digest of case, time point, attempt and
channel) and an HMAC-SHA256 signature of the body (``X-Signature: sha256=<hex>``). Transient
failures (connection errors, 429/502/503/504) are retried with urllib3's backoff; a gateway
that honours ``Idempotency-Key`` turns a resend after a crash into a no-op. Whether it does is
the gateway's promise: this channel cannot ask, so it cannot confirm.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import ClassVar

import requests

from scheduler.channels.base import ChannelError, Message, Templates, http_session, redact_contact
from scheduler.settings import RemindersSettings


class WebhookChannel:
    name: ClassVar[str] = "webhook"
    can_confirm: ClassVar[bool] = False

    def __init__(self, settings: RemindersSettings, templates: Templates) -> None:
        self.cfg = settings.webhook
        self.templates = templates
        self.http_cfg, self.session = http_session(self.cfg)

    def can_reach(self, msg: Message) -> bool:
        return bool(msg.phone)

    def payload(self, msg: Message) -> bytes:
        body = {
            "idempotency_key": msg.external_id,
            "to": msg.phone,
            "text": self.templates.render("sms.txt.j2", msg),
            "timepoint": msg.timepoint,
            "attempt": msg.attempt,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    def send(self, msg: Message) -> str:
        if not self.cfg.url:
            raise ChannelError("webhook.url is not configured")
        body = self.payload(msg)
        headers = {"Content-Type": "application/json", "Idempotency-Key": msg.external_id}
        if self.cfg.signing_secret:
            digest = hmac.new(self.cfg.signing_secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Signature"] = f"sha256={digest}"
        try:
            resp = self.session.post(self.cfg.url, data=body, headers=headers, timeout=self.http_cfg.timeout)
        except requests.RequestException as exc:
            raise ChannelError(redact_contact(f"webhook {type(exc).__name__}", msg)) from None
        if resp.status_code >= 300:
            raise ChannelError(f"webhook answered HTTP {resp.status_code}")
        try:
            data = resp.json()
        except ValueError:
            data = None
        provider = data.get("id") if isinstance(data, dict) else None
        return str(provider or resp.headers.get("X-Request-Id") or msg.external_id)[:256]

    def confirm(self, msg: Message) -> str | None:
        raise ChannelError("the webhook cannot confirm an earlier delivery")
