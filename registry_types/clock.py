"""What code that must be testable without sleeping asks for the time.

Leases (``registry_store.leases``) and the reminder scheduler (``scheduler.clock``, which adds
a clock set by hand and site-local day helpers) take a ``Clock`` instead of calling
``datetime.now``, so tests move time instead of waiting for it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Timezone-aware current time (UTC)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)
