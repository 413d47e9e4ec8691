"""Settings of the review web UI (config key ``review:``). Every key has a default."""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["viewer", "reviewer", "admin"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReviewSettings(_Strict):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    # The cookie-signing secret: from ${ENV_VAR}, or session_secret_file. Neither set: a random
    # secret is created once in session_key_file.
    session_secret: str | None = Field(default=None, min_length=32)
    session_secret_file: Path | None = None
    # Where the generated secret is kept; relative to the config file (never the current
    # directory, which differs between a shell, cron and the service).
    session_key_file: Path = Path("review-session.key")
    # Secure cookies need HTTPS in front of the UI (a reverse proxy). auto: secure unless the UI
    # listens on a loopback address (127.0.0.1, ::1, localhost), where plain HTTP is the normal
    # single-host use; true/false force it either way. A TLS proxy on the same host forwarding
    # to 127.0.0.1 needs true.
    secure_cookies: bool | Literal["auto"] = "auto"
    session_max_age: int = Field(default=8 * 3600, ge=60)
    # Consecutive wrong passwords that lock an account, and for how long.
    login_max_failures: int = Field(default=5, ge=1, le=100)
    login_lockout_minutes: int = Field(default=15, ge=1, le=24 * 60)
    # Failed sign-ins one client address may make within login_client_window_hours (whatever
    # the accounts); past it the address is refused without a password check and no longer
    # counts against accounts, so a stranger cannot keep an account locked (behind a reverse
    # proxy the address comes from X-Forwarded-For of the trusted proxy).
    login_max_failures_per_client: int = Field(default=20, ge=1, le=10_000)
    login_client_window_hours: int = Field(default=24, ge=1, le=7 * 24)
    # Roles that see raw resources masked (only codes, ids, statuses, references and dates
    # readable) and contact details hidden in lists and exports.
    mask_phi_for: tuple[Role, ...] = ("viewer",)
    page_size: int = Field(default=50, ge=5, le=500)
    # Where an opened reminder link (GET /r/{token}; point reminders.link.url_template at
    # https://<this UI>/r/{token}) sends the patient: a REDCap survey, the patient portal, ...
    # Keys, most specific first: "<instrument>:<time point>" (e.g. "odi:90d"), "<time point>",
    # "<instrument>", "default"; the instruments are those of the case's module
    # (reminders.instruments). A URL may contain {timepoint} and {instrument}.
    questionnaire_urls: dict[str, str] = Field(default_factory=dict)
    # /healthz reports the nightly run down when the newest successful sync of a pulled
    # source finished longer ago than this (a daily job, plus slack for a slow night).
    health_nightly_max_age_hours: int = Field(default=26, ge=1)

    def cookies_secure(self, host: str | None = None) -> bool:
        """Whether session cookies get the Secure flag when the UI listens on ``host``."""
        if isinstance(self.secure_cookies, bool):
            return self.secure_cookies
        return not is_loopback(host or self.host)

    def secret(self) -> str:
        """The session secret; a generated one lives in a file readable by its owner only."""
        if self.session_secret:
            return self.session_secret
        path = self.session_secret_file or self.session_key_file
        if not path.is_absolute():
            # Only settings built without a config file get here (the loader resolves it).
            raise ValueError(f"review.session_key_file {path} must be an absolute path")
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process created it first: use theirs
                return path.read_text().strip()
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
        value = path.read_text().strip()
        if len(value) < 32:
            raise ValueError(f"review session secret in {path} is shorter than 32 characters")
        return value


def is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
