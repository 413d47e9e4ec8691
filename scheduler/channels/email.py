"""Reminders by email over SMTP (STARTTLS on 587, implicit TLS on 465, or plain for a local relay).

The Message-ID is derived from the idempotency key, so a message resent after a crash carries
the same Message-ID as the first one: mail stores and clients that de-duplicate by Message-ID
show it once. SMTP offers no way to ask whether a message was accepted earlier, so this
channel cannot confirm; what happens to an unconfirmed send is ``reminders.unconfirmed``.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate
from typing import ClassVar

from scheduler.channels.base import ChannelError, Message, Templates, redact_contact
from scheduler.clock import Clock, SystemClock
from scheduler.settings import RemindersSettings


class EmailChannel:
    name: ClassVar[str] = "email"
    can_confirm: ClassVar[bool] = False

    def __init__(self, settings: RemindersSettings, templates: Templates, clock: Clock | None = None) -> None:
        self.cfg = settings.smtp
        self.templates = templates
        self.clock = clock or SystemClock()
        self.domain = self.cfg.from_address.rpartition("@")[2] or "localhost"

    def can_reach(self, msg: Message) -> bool:
        return bool(msg.email)

    def message_id(self, msg: Message) -> str:
        return f"<{msg.external_id}@{self.domain}>"

    def build(self, msg: Message) -> EmailMessage:
        mail = EmailMessage()
        mail["Subject"] = self.templates.render("email_subject.txt.j2", msg)
        mail["From"] = self.cfg.from_address
        mail["To"] = msg.email or ""
        if self.cfg.reply_to:
            mail["Reply-To"] = self.cfg.reply_to
        mail["Date"] = formatdate(self.clock.now().timestamp(), localtime=False)
        mail["Message-ID"] = self.message_id(msg)
        mail["Auto-Submitted"] = "auto-generated"
        mail.set_content(self.templates.render("email_body.txt.j2", msg))
        if self.templates.exists("email_body.html.j2"):
            mail.add_alternative(self.templates.render("email_body.html.j2", msg), subtype="html")
        return mail

    def _connect(self) -> smtplib.SMTP:
        cfg = self.cfg
        context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        if cfg.security == "tls":
            return smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_seconds, context=context)
        smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_seconds)
        if cfg.security == "starttls":
            smtp.starttls(context=context)
        return smtp

    def send(self, msg: Message) -> str:
        if not msg.email:
            raise ChannelError("no email address")
        mail = self.build(msg)
        try:
            with self._connect() as smtp:
                password = self.cfg.secret()
                if self.cfg.username and password:
                    smtp.login(self.cfg.username, password)
                smtp.send_message(mail)
        except (smtplib.SMTPException, OSError) as exc:
            raise ChannelError(redact_contact(f"SMTP {type(exc).__name__}: {exc}", msg)) from None
        return self.message_id(msg)

    def confirm(self, msg: Message) -> str | None:
        raise ChannelError("SMTP cannot confirm an earlier delivery")
