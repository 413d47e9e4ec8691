"""Structured logging: readable on a terminal, JSON lines for daemons and log shippers.

Log events carry ids, counts and hashes only. Patient data (names, MRNs, birth dates) never
goes into an event: callers pass resource ids, and ``redact`` guards the few places where a
payload could slip in.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

_PHI_KEYS = frozenset(
    {
        "name",
        "birth_date",
        "birthDate",
        "mrn",
        "email",
        "phone",
        "address",
        "resource",
        "raw",
        "payload",
        "telecom",
    }
)


def phi_hash(value: str) -> str:
    """A short, unsalted digest for correlating values in logs without revealing them."""
    return hashlib.sha256(value.encode()).hexdigest()[:12]


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in _PHI_KEYS.intersection(event):
        event[key] = "[redacted]"
    return event


def configure(fmt: Literal["auto", "console", "json"] = "auto", level: str = "INFO") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries that use stdlib logging (alembic, apscheduler) go to stderr at WARNING+.
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
