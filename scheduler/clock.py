"""The time the reminder code sees: real in production, set by hand in tests and ``--as-of``.

Everything that decides "is it due", "is it quiet hours", "which day's cap" asks a Clock, so
a year of reminders can be simulated in a second without sleeping or patching datetime.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from registry_types.clock import Clock, SystemClock

__all__ = ["Clock", "FixedClock", "SystemClock", "at_local", "local_day_bounds", "local_now", "local_today"]


class FixedClock:
    """A clock that only moves when told to."""

    def __init__(self, at: datetime) -> None:
        self.set(at)

    def set(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("FixedClock needs a timezone-aware datetime")
        self._now = at.astimezone(UTC)

    def advance(self, **delta: float) -> None:
        self._now += timedelta(**delta)

    def now(self) -> datetime:
        return self._now


def local_now(clock: Clock, tz: ZoneInfo) -> datetime:
    return clock.now().astimezone(tz)


def local_today(clock: Clock, tz: ZoneInfo) -> date:
    return local_now(clock, tz).date()


def local_day_bounds(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """UTC start and end of a site-local calendar day (23 or 25 hours long on DST days)."""
    start = datetime.combine(day, time(0), tz).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tz).astimezone(UTC)
    return start, end


def at_local(day: date, hour: int, tz: ZoneInfo, minute: int = 0) -> FixedClock:
    """A FixedClock at a site-local wall time (handy for tests and ``--as-of``)."""
    return FixedClock(datetime.combine(day, time(hour, minute), tz))
