"""``registry-adapter doctor`` checks of the reminder channels (registered through the
``spine_registry_adapter.doctor`` entry point): SMTP says NOOP, the webhook gets a TCP
connection and nothing else, so no patient is ever sent anything by a check.
"""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

from registry_adapter.config import Settings
from registry_adapter.doctor import NETWORK_TIMEOUT, Check, Doctor, Result, failed, passed, skipped
from scheduler.channels.base import Templates
from scheduler.channels.email import EmailChannel
from scheduler.settings import RemindersSettings


def _reminder_channels(settings: Settings) -> tuple[str, ...]:
    return settings.section(RemindersSettings).channels if settings.section(RemindersSettings).enabled else ()


def check_smtp(doc: Doctor) -> Iterator[Result]:
    if doc.settings is None or "email" not in _reminder_channels(doc.settings):
        yield skipped("SMTP", "e-mail reminders are not enabled")
        return
    reminders = doc.settings.section(RemindersSettings)
    cfg = reminders.smtp
    check = f"SMTP {cfg.host}:{cfg.port}"
    try:
        # The channel's own connection (same TLS handling); NOOP sends nothing.
        with EmailChannel(reminders, Templates(reminders))._connect() as smtp:
            password = cfg.secret()
            if cfg.username and password:
                smtp.login(cfg.username, password)
            code, _ = smtp.noop()
    except (smtplib.SMTPException, OSError) as exc:
        fix = "check reminders.smtp host, port, security, login"
        yield failed(check, f"{type(exc).__name__}: {exc}", fix)
        return
    yield passed(check, f"connected ({cfg.security}{', logged in' if cfg.username else ''}), NOOP {code}")


def check_webhook(doc: Doctor) -> Iterator[Result]:
    url = doc.settings.section(RemindersSettings).webhook.url if doc.settings else None
    if doc.settings is None or "webhook" not in _reminder_channels(doc.settings) or not url:
        yield skipped("webhook", "webhook reminders are not enabled")
        return
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    check = f"webhook {parts.hostname}:{port}"
    try:
        # A TCP connection only: any HTTP request could be taken for a message to send.
        with socket.create_connection((parts.hostname or "", port), timeout=NETWORK_TIMEOUT[0]):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        yield failed(check, f"cannot connect: {reason}", "check the URL and firewall")
        return
    yield passed(check, "accepts connections")


CHECKS: list[Check] = [check_smtp, check_webhook]
