"""Settings of registry submission (config key ``submission:``). Every key has a default."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from registry_adapter.cron_schedule import CronSchedule


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SftpSettings(_Strict):
    """The registry's SFTP drop box. Key authentication only, and the server's host key must
    be in ``known_hosts_file``: an unknown or changed key is refused, never trusted on first use."""

    host: str
    port: int = Field(default=22, ge=1, le=65535)
    username: str
    private_key_file: Path
    # For an encrypted key: ${ENV_VAR}, or private_key_passphrase_file: path (never the file).
    private_key_passphrase: str | None = None
    private_key_passphrase_file: Path | None = None
    known_hosts_file: Path
    # The folder on the server the package goes into.
    remote_dir: str = "."
    timeout_seconds: float = Field(default=30.0, gt=0)
    # Whole upload attempts (connect, upload, verify, rename) before giving up.
    attempts: int = Field(default=3, ge=1, le=20)
    retry_delay_seconds: float = Field(default=10.0, ge=0)

    def passphrase(self) -> str | None:
        if self.private_key_passphrase_file is None:
            return self.private_key_passphrase
        return self.private_key_passphrase_file.read_text().rstrip("\r\n")


class SubmissionSchedule(CronSchedule):
    """The daemon's submission run: a 5-field crontab (validated, DST-safe in a local zone,
    like the nightly sync). Default: 03:00 UTC, 15 days after each quarter ends."""

    enabled: bool = True
    cron: str = "0 3 15 1,4,7,10 *"


class SubmissionSettings(_Strict):
    destination: Literal["folder", "sftp"] = "folder"
    # Where packages are written with destination folder (relative to the working directory).
    folder: Path = Path("var/submissions")
    sftp: SftpSettings | None = None
    # Dates of birth in the package: the full date, or the year only.
    birth_date: Literal["full", "year"] = "year"
    schedule: SubmissionSchedule = Field(default_factory=SubmissionSchedule)

    @model_validator(mode="after")
    def _sftp_configured(self) -> SubmissionSettings:
        if self.destination == "sftp" and self.sftp is None:
            raise ValueError("destination sftp needs the sftp: settings (host, username, keys)")
        return self
