"""What every reminder channel shares: the message, the channel interface, templates, links.

A channel gets a :class:`Message` and either delivers it (returning the channel's id for it)
or raises :class:`ChannelError`. Every message carries ``external_id``, derived from the
idempotency key (case, time point, attempt, channel): channels hand it to the receiver
(SMTP Message-ID, webhook ``Idempotency-Key``, FHIR identifier with conditional create) so a
resend after a crash is recognisable as the same message. A channel that can ask the
receiver whether a message arrived sets ``can_confirm`` and implements :meth:`confirm`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, ClassVar, Protocol

import requests
from itsdangerous import BadSignature, URLSafeTimedSerializer
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined

from adapters.http import HttpConfig, make_session
from scheduler.settings import FhirChannelSettings, RemindersSettings, WebhookSettings

BUNDLED_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
_TOKEN_SALT = "spine-registry-prom-reminder"


class ChannelError(Exception):
    """A delivery failed. The message must not contain patient data (addresses, numbers)."""


@dataclass(frozen=True, slots=True)
class Message:
    idempotency_key: str
    reminder_id: int
    case_id: str
    source: str
    procedure_id: str
    patient_id: str
    timepoint: str
    timepoint_label: str
    attempt: int
    due_date: date
    window_end: date
    link: str | None
    email: str | None
    phone: str | None

    @property
    def external_id(self) -> str:
        """The key as receivers see it: a digest, so no case or procedure id leaves the site."""
        return hashlib.sha256(self.idempotency_key.encode()).hexdigest()[:40]


class Channel(Protocol):
    name: ClassVar[str]
    can_confirm: ClassVar[bool]

    def can_reach(self, msg: Message) -> bool:
        """Whether this patient can be reached here (an email address for email, ...)."""
        ...

    def send(self, msg: Message) -> str:
        """Deliver; returns the receiver's id for the message. Raises ChannelError."""
        ...

    def confirm(self, msg: Message) -> str | None:
        """After a crash: the receiver's id if ``msg`` arrived, None if it did not.

        Only called when ``can_confirm``; raises ChannelError when the receiver cannot be asked.
        """
        ...


def idempotency_key(case_id: str, timepoint: str, attempt: int, channel: str) -> str:
    return f"{case_id}|{timepoint}|{attempt}|{channel}"


def redact_contact(text: str, msg: Message) -> str:
    """Channel errors often echo the recipient ("<a@b>: recipient rejected"); strip it."""
    for value in (msg.email, msg.phone):
        if value:
            text = text.replace(value, "[recipient]")
    return text[:500]


def http_session(cfg: WebhookSettings | FhirChannelSettings) -> tuple[HttpConfig, requests.Session]:
    """The transport of an HTTP channel (webhook, FHIR): the channel's read timeout and retries,
    a 5 s connect timeout and backoff capped at 10 s, the same for every such channel."""
    http_cfg = HttpConfig(
        timeout=(5.0, cfg.timeout_seconds),
        retries=cfg.retries,
        backoff_factor=0.5,
        backoff_max=10.0,
    )
    return http_cfg, make_session(http_cfg)


# -- signed links ---------------------------------------------------------------------------


def make_link_token(secret: str, reminder_id: int, attempt: int) -> str:
    """A signed, timestamped token naming only the reminder row and attempt (no PHI)."""
    return str(URLSafeTimedSerializer(secret, salt=_TOKEN_SALT).dumps({"r": reminder_id, "a": attempt}))


def verify_link_token(secret: str, token: str, max_age_days: int) -> tuple[int, int] | None:
    """(reminder id, attempt) of a valid token, None for a forged or expired one.

    For whoever serves the PROM form (the web UI): it maps the reminder to the case.
    """
    try:
        data = URLSafeTimedSerializer(secret, salt=_TOKEN_SALT).loads(token, max_age=max_age_days * 86400)
    except BadSignature:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("r"), int) or not isinstance(data.get("a"), int):
        return None
    return data["r"], data["a"]


def build_link(settings: RemindersSettings, reminder_id: int, attempt: int) -> str | None:
    secret = settings.link.token_secret
    if not secret:
        return None
    return settings.link.url_template.replace("{token}", make_link_token(secret, reminder_id, attempt))


# -- templates ------------------------------------------------------------------------------


class Templates:
    """Jinja2 templates: the site's folder first, then the bundled defaults."""

    def __init__(self, settings: RemindersSettings) -> None:
        folders = [str(p) for p in (settings.templates, BUNDLED_TEMPLATES) if p is not None]
        self.settings = settings
        self.env = Environment(
            loader=ChoiceLoader([FileSystemLoader(f) for f in folders]),
            autoescape=lambda name: bool(name and name.endswith(".html.j2")),
            undefined=StrictUndefined,
            keep_trailing_newline=False,
        )

    def context(self, msg: Message) -> dict[str, Any]:
        # Deliberately no name or other patient data: the message may be read by anyone
        # who sees the phone or the mailbox.
        return {
            "site_name": self.settings.site_name,
            "timepoint": msg.timepoint,
            "timepoint_label": msg.timepoint_label,
            "attempt": msg.attempt,
            "max_attempts": self.settings.max_attempts,
            "due_date": msg.due_date,
            "window_end": msg.window_end,
            "link": msg.link,
        }

    def exists(self, name: str) -> bool:
        return name in self.env.list_templates()

    def render(self, name: str, msg: Message) -> str:
        return self.env.get_template(name).render(self.context(msg)).strip()
