"""Feed type ``mllp``: an MLLP listener hospitals push HL7 v2 messages to (``registry_adapter.listener``).

Pushed, not pulled: ``sync`` skips it and ``listen`` (or the daemon) serves it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from registry_adapter.feeds import FeedType
from registry_adapter.feeds.base import FeedSettings


class MllpSource(FeedSettings):
    """An MLLP listener: hospitals push HL7 v2 messages; each is staged before its ACK."""

    type: Literal["mllp"]
    name: str
    host: str = "127.0.0.1"
    port: int = Field(default=2575, ge=0, le=65535)
    # TLS: both set, or neither. The private key file must be readable by the adapter only.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # How often received messages are converted to FHIR and mapped (seconds).
    convert_every_seconds: float = Field(default=2.0, gt=0)
    # Close a connection silent this long (seconds); null: never. Senders that hold one
    # connection for days reconnect when they next send.
    idle_timeout_seconds: float | None = Field(default=300.0, gt=0)
    # Connections at once; more are refused (closed at once, logged, counted).
    max_connections: int = Field(default=64, ge=1)
    # Bytes of half-received frames across all connections; the connection pushing past it
    # is closed.
    max_buffer_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # "MSH-3|MSH-4" pairs accepted ("*|MSH-4": any application of that facility); others get
    # AR and are kept apart as rejected. Unset: every sender is accepted.
    allowed_senders: list[str] | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> MllpSource:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("set both tls_cert_file and tls_key_file, or neither")
        return self


FEED = FeedType("mllp", MllpSource, None, "MLLP listener for pushed HL7 v2 messages")
