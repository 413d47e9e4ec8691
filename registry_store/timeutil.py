"""Clock helpers. Stored timestamps are timezone-aware UTC; dates are site-local dates."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
