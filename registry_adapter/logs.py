"""Structured logging: readable on a terminal, JSON lines for daemons and log shippers.

Log events carry ids, counts and hashes only. Patient data (names, MRNs, birth dates) never
goes into an event: callers pass resource ids, and ``redact`` guards the few places where a
payload could slip in.

Everything goes through structlog's renderer: the project's own events, and records of
libraries that use stdlib logging (uvicorn, urllib3, alembic, apscheduler) and Python
warnings, rendered by a ``ProcessorFormatter`` with the same processors. Values bound with
``structlog.contextvars`` (``run_id`` during a sync run) appear on every line, library ones
included. Query strings in URLs (``/Patient?identifier=<MRN>``) are cut from every event.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

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


# "?" and what follows up to whitespace or a quote: the query of a URL quoted in a message.
_QUERY = re.compile(r"\?[^\s'\"<>)]+")


def strip_queries(text: str) -> str:
    """``text`` with the query of every URL in it replaced by ``?[redacted]``."""
    return _QUERY.sub("?[redacted]", text) if "?" in text else text


def redact_queries(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Query strings can carry identifiers (``?identifier=<MRN>``): cut them from every text value."""
    for key, value in event.items():
        if isinstance(value, str) and "?" in value:
            event[key] = strip_queries(value)
    return event


def url_for_log(url: str) -> str:
    """``scheme://host[:port]/path`` of ``url``: what a failure names, without query or user info."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}" if parts.scheme else parts.path


def failure_fields(exc: BaseException, endpoint: str | None = None) -> dict[str, str]:
    """``error`` (the type) and, when the failure or one it came from was a request, the
    ``url`` it went to: so a failure line says which server failed, without the message text
    (third-party messages can quote request data).

    ``endpoint`` (a source's base URL) names the server when the exception knows only the
    path it failed on (``FhirHttpError``), or nothing at all."""
    fields = {"error": type(exc).__name__}
    seen: set[int] = set()
    current: BaseException | None = exc
    path: str | None = None
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        request = getattr(current, "request", None)  # requests / httpx exceptions
        url = getattr(request, "url", None) or getattr(current, "url", None)
        if isinstance(url, str | bytes) or (url is not None and hasattr(url, "host")):
            fields["url"] = url_for_log(url.decode() if isinstance(url, bytes) else str(url))
            return fields
        host = getattr(current, "host", None)  # urllib3 pool errors name the host
        if isinstance(host, str) and host:
            port = getattr(current, "port", None)
            fields["host"] = f"{host}:{port}" if port else host
            return fields
        found = getattr(current, "path", None)
        if path is None and isinstance(found, str) and found.startswith("/"):
            path = found
        current = current.__cause__ or current.__context__
    if endpoint:
        parts = urlsplit(endpoint)
        fields["url"] = url_for_log(urlunsplit((parts.scheme, parts.netloc, path or parts.path, "", "")))
    return fields


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]


def configure(fmt: Literal["auto", "console", "json"] = "auto", level: str = "INFO") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*_shared_processors(), structlog.processors.format_exc_info, redact_queries, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries that use stdlib logging (uvicorn, urllib3, alembic, apscheduler) and Python
    # warnings: WARNING and up, rendered like our own events (JSON in a daemon).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *_shared_processors()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact_queries,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    # Off first: captureWarnings(True) does nothing when it is already on, and whoever swapped
    # warnings.showwarning since (warnings.catch_warnings, a test runner) would keep it.
    logging.captureWarnings(False)
    logging.captureWarnings(True)
