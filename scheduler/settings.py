"""Settings of the reminder planner/dispatcher and the scheduler daemon (config keys
``reminders:`` and ``scheduler:``). Every key has a default so a config without them works."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RemindersSettings(_Strict):
    enabled: bool = False


class SchedulerSettings(_Strict):
    pass
