"""A crontab schedule as a settings model, shared by every package that runs something on a
schedule (the nightly sync in ``scheduler``, the registry submission here).

It lives below ``scheduler`` so that the submission settings can use it without importing
the scheduler (packages import down the layers only).
"""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, field_validator


class CronSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Standard 5-field crontab. In UTC by default (libraries.md 4.3: APScheduler's cron has DST
    # bugs in local zones); another zone is run as a DST-safe wall-clock schedule.
    cron: str = "30 2 * * *"
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value, timezone="UTC")
        except ValueError as exc:
            raise ValueError(f"not a valid crontab expression: {exc}") from None
        return value
