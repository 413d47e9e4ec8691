"""Settings of the reminder planner/dispatcher and the scheduler daemon (config keys
``reminders:`` and ``scheduler:``). Every key has a default so a config without them works.

Secrets (SMTP password, webhook secret, link-token secret, FHIR bearer token) come from
``${ENV_VAR}`` in the file or from a ``*_file`` key naming a file that holds them.
"""

from __future__ import annotations

import re
import warnings
from datetime import time
from pathlib import Path
from typing import Literal, cast, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from registry_adapter.cron_schedule import CronSchedule

Channel = Literal["email", "webhook", "fhir", "worklist"]
# Channels that cannot ask the receiver whether an earlier send arrived.
UnconfirmableChannel = Literal["email", "webhook"]
UnconfirmedPolicy = Literal["resend", "assume_sent"]
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _read_secret(value: str | None, file: Path | None, what: str) -> str | None:
    if value:
        return value
    if file is None:
        return None
    try:
        return file.expanduser().read_text().strip()
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {file}: {exc.strerror}") from None


class SmtpSettings(_Strict):
    host: str = "localhost"
    port: int = Field(default=587, ge=1, le=65535)
    # starttls: plain connection upgraded with STARTTLS (port 587); tls: implicit TLS (465);
    # none: only for a relay on localhost or in tests.
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    # A CA bundle for a site relay with a private CA; None = system CAs.
    ca_file: Path | None = None
    from_address: str = "proms@example.invalid"
    reply_to: str | None = None
    timeout_seconds: float = Field(default=30.0, gt=0)

    def secret(self) -> str | None:
        return _read_secret(self.password, self.password_file, "reminders.smtp.password_file")


class WebhookSettings(_Strict):
    """An SMS gateway (or any HTTP receiver): JSON POST, HMAC-signed, Idempotency-Key header."""

    url: str | None = None
    # Signs the body (X-Signature: sha256=<hex>); ``signing_secret_file: path`` also works.
    signing_secret: str | None = None
    timeout_seconds: float = Field(default=15.0, gt=0)
    retries: int = Field(default=3, ge=0, le=10)


class FhirChannelSettings(_Strict):
    """Reminders as CommunicationRequest (or Task) on the hospital's FHIR server."""

    base_url: str | None = None
    resource: Literal["CommunicationRequest", "Task"] = "CommunicationRequest"
    # The identifier system of the idempotency key (conditional create uses it).
    identifier_system: str = "urn:spine-registry-adapter:reminder"
    bearer_token: str | None = None
    bearer_token_file: Path | None = None
    timeout_seconds: float = Field(default=30.0, gt=0)
    retries: int = Field(default=3, ge=0, le=10)

    def token(self) -> str | None:
        return _read_secret(self.bearer_token, self.bearer_token_file, "reminders.fhir.bearer_token_file")


class LinkSettings(_Strict):
    # The PROM form link; {token} is replaced by a signed token that names only the reminder.
    url_template: str = "https://proms.example.invalid/r/{token}"
    # Signing secret of the token (itsdangerous). From ${ENV_VAR} or token_secret_file.
    token_secret: str | None = None
    # How long a link stays valid, checked by whoever serves the form (verify_link_token).
    max_age_days: int = Field(default=200, ge=1)

    @field_validator("url_template")
    @classmethod
    def _has_token(cls, value: str) -> str:
        if "{token}" not in value:
            raise ValueError("url_template must contain {token}")
        return value


class QuietHours(_Strict):
    """No reminder goes out between start and end (site-local wall clock; may wrap midnight)."""

    start: str = "20:00"
    end: str = "08:00"

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError("use HH:MM (24 h)")
        return value

    def contains(self, t: time) -> bool:
        start, end = time.fromisoformat(self.start), time.fromisoformat(self.end)
        if start == end:
            return False
        if start < end:
            return start <= t < end
        return t >= start or t < end


def _default_unconfirmed() -> dict[UnconfirmableChannel, UnconfirmedPolicy]:
    return {"email": "assume_sent", "webhook": "resend"}


def _default_instruments() -> dict[str, tuple[str, ...]]:
    return {
        "lumbar": ("odi", "promis10"),
        "cervical": ("ndi", "promis10"),
        "thoracic": ("odi", "promis10"),
        "default": ("odi", "ndi", "promis10"),
    }


class RemindersSettings(_Strict):
    enabled: bool = False

    @model_validator(mode="before")
    @classmethod
    def _drop_removed_keys(cls, data: object) -> object:
        # cancel_procedure_statuses was removed: an entered-in-error / not-done procedure now
        # withdraws its case (with the reason), which cancels its reminders. Old configs load.
        if isinstance(data, dict) and "cancel_procedure_statuses" in data:
            data = {k: v for k, v in data.items() if k != "cancel_procedure_statuses"}
            warnings.warn(
                "reminders.cancel_procedure_statuses is no longer used (such procedures withdraw"
                " their case); remove it from the configuration",
                FutureWarning,  # shown to operators by default, unlike DeprecationWarning
                stacklevel=2,
            )
        return data

    # Time points (names from proms.timepoints) that get reminders; the others (baseline) are
    # tracked only: completed, open or missing.
    remind: tuple[str, ...] = ("90d", "1y")
    # Channels in order. first: the first channel the patient can be reached on (email needs an
    # address, webhook a phone number; fhir and worklist always can); all: every such channel.
    channels: tuple[Channel, ...] = ("email",)
    channel_mode: Literal["first", "all"] = "first"
    first_reminder_days_before: int = Field(default=0, ge=0)
    repeat_every_days: int = Field(default=7, ge=1)
    max_attempts: int = Field(default=3, ge=1, le=50)
    # Instruments whose response completes a time point, per case module ("default" for cases
    # without one); any: one of them is enough, all: each of them is needed.
    instruments: dict[str, tuple[str, ...]] = Field(default_factory=_default_instruments)
    complete_when: Literal["any", "all"] = "any"
    quiet_hours: QuietHours | None = Field(default_factory=QuietHours)
    # Reminder attempts started per site-local day; the rest wait for the next day.
    daily_cap: int = Field(default=500, ge=1)
    # A failed send is retried on later dispatch runs after 1, 3, 7, ... x this, then given up.
    retry_backoff_minutes: int = Field(default=60, ge=1)
    max_tries: int = Field(default=4, ge=1, le=20)
    # A pending send left by a crash on a channel that cannot ask its receiver whether it
    # arrived (email, webhook; FHIR and the worklist confirm): resend with the same idempotency
    # key (at least once) or record it as sent, flagged unconfirmed for a coordinator to check
    # (at most once). Per channel (``{email: resend}``, merged over the defaults) or one value
    # for both. Defaults: email assume_sent, since SMTP has no de-duplication and a resend can
    # reach the patient twice; webhook resend, since gateways de-duplicate by Idempotency-Key.
    unconfirmed: dict[UnconfirmableChannel, UnconfirmedPolicy] = Field(default_factory=_default_unconfirmed)
    site_name: str = "our spine clinic"
    # Names of the time points in messages, e.g. {"90d": "3-month", "1y": "1-year"}.
    timepoint_labels: dict[str, str] = Field(
        default_factory=lambda: {"baseline": "pre-operative", "90d": "3-month", "1y": "1-year"}
    )
    # A folder with the site's own templates (email_subject.txt.j2, email_body.txt.j2,
    # optional email_body.html.j2, sms.txt.j2, fhir.txt.j2); missing ones fall back to the
    # bundled scheduler/templates/.
    templates: Path | None = None
    link: LinkSettings = Field(default_factory=LinkSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    fhir: FhirChannelSettings = Field(default_factory=FhirChannelSettings)

    @field_validator("unconfirmed", mode="before")
    @classmethod
    def _unconfirmed_per_channel(cls, value: object) -> object:
        if isinstance(value, str):  # one policy for every channel that cannot confirm
            return dict.fromkeys(get_args(UnconfirmableChannel), value)
        if isinstance(value, dict):
            return {**_default_unconfirmed(), **value}
        return value

    def unconfirmed_policy(self, channel: str) -> UnconfirmedPolicy:
        """What to do with a crashed send on ``channel`` (only asked for channels that cannot confirm)."""
        return self.unconfirmed.get(cast(UnconfirmableChannel, channel), "resend")

    @model_validator(mode="after")
    def _channels_configured(self) -> RemindersSettings:
        if not self.channels:
            raise ValueError("channels: name at least one of email, webhook, fhir, worklist")
        if not self.enabled:
            return self
        if "webhook" in self.channels and not self.webhook.url:
            raise ValueError("channel webhook needs webhook.url")
        if "fhir" in self.channels and not self.fhir.base_url:
            raise ValueError("channel fhir needs fhir.base_url")
        if set(self.channels) & {"email", "webhook"} and not self.link.token_secret:
            raise ValueError("email/webhook reminders carry a link: set link.token_secret (from ${ENV_VAR})")
        return self


class NightlySettings(CronSchedule):
    """The nightly sync: 02:30 UTC unless configured."""



class SchedulerSettings(_Strict):
    nightly: NightlySettings = Field(default_factory=NightlySettings)
    dispatch_interval_minutes: int = Field(default=60, ge=1, le=24 * 60)
    # A run missed while the host was down still runs (once) if it is at most this late.
    misfire_grace_seconds: int = Field(default=12 * 3600, ge=1)
    # APScheduler's job table in the registry database.
    jobstore_table: str = "apscheduler_jobs"
    # Job lock leases: the holder renews its lease (heartbeat) every third of this; a lease
    # not renewed for this long is stale and taken over (a dead holder on this host at once).
    lock_ttl_seconds: int = Field(default=90, ge=10)
