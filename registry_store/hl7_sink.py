"""Durable storage of received HL7 v2 messages in staging (the MLLP listener's sink).

A message is staged raw, as ``HL7v2Message`` with identity ``<sending facility>|<MSH-10>``,
and committed before the listener acknowledges it, so nothing acknowledged is ever lost. The
unique staging identity makes a resent control id a duplicate: acknowledged, not staged
twice. Messages whose header cannot be accepted are kept too (``invalid`` with their error),
and every answer is logged in ``hl7_acks`` for the feed-health page. Conversion to FHIR
happens later, in batches, in the pipeline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, select

from adapters.hl7v2.mllp import InboundMessage, StoreOutcome, StoreStatus
from adapters.hl7v2.records import HL7_CONTENT_TYPE, HL7_TYPE, message_identity
from registry_store.errors import Issue, replace_errors
from registry_store.models import Hl7Ack
from registry_store.staging import STAGING
from registry_store.timeutil import utcnow

ACKS = Hl7Ack.__table__  # type: ignore[attr-defined]


class StagingSink:
    """``MessageSink`` on the registry store; called from the listener's one writer thread."""

    def __init__(self, engine: Engine, source: str):
        self.engine = engine
        self.source = source

    def store(self, messages: Sequence[InboundMessage]) -> Sequence[StoreOutcome]:
        now = utcnow()
        outcomes: list[StoreOutcome] = []
        with self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                # An ACK promises durability: fsync this commit even if power fails.
                conn.exec_driver_sql("PRAGMA synchronous=FULL")
            keys = [message_identity(*m.dedup_key) for m in messages if m.dedup_key and not m.header_error]
            existing: set[str] = set()
            for start in range(0, len(keys), 900):
                existing |= {
                    r.resource_id
                    for r in conn.execute(
                        select(STAGING.c.resource_id).where(
                            STAGING.c.source == self.source,
                            STAGING.c.resource_type == HL7_TYPE,
                            STAGING.c.resource_id.in_(keys[start : start + 900]),
                        )
                    )
                }
            rows: list[dict[str, Any]] = []
            acks: list[dict[str, Any]] = []
            rejected: list[tuple[InboundMessage, str]] = []
            for msg in messages:
                header = msg.header or (msg.header_error.header if msg.header_error else None)
                ack = {
                    "received_at": msg.received_at,
                    "source": self.source,
                    "sending_facility": header.sending_facility if header else None,
                    "control_id": header.control_id if header else None,
                    "message_type": header.message_type if header else None,
                    "ack_code": "AA",
                    "error": None,
                }
                digest = hashlib.sha256(msg.raw).hexdigest()
                if msg.header_error is not None or msg.dedup_key is None:
                    ident = f"rejected|sha256-{digest[:40]}"
                    reason = msg.header_error.message if msg.header_error else "message has no control id"
                    ack.update(ack_code=msg.header_error.ack_code if msg.header_error else "AR", error=reason)
                    if ident not in existing:
                        existing.add(ident)
                        rows.append(self._row(msg, ident, digest, "invalid", now))
                        rejected.append((msg, ident))
                    outcomes.append(StoreOutcome(StoreStatus.REJECTED, reason))
                else:
                    ident = message_identity(*msg.dedup_key)
                    if ident in existing:
                        outcomes.append(StoreOutcome(StoreStatus.DUPLICATE))
                    else:
                        existing.add(ident)
                        rows.append(self._row(msg, ident, digest, "pending", now))
                        outcomes.append(StoreOutcome(StoreStatus.STORED))
                acks.append(ack)
            if rows:
                conn.execute(STAGING.insert(), rows)
            for msg, ident in rejected:
                staging_id = conn.execute(
                    select(STAGING.c.id).where(
                        STAGING.c.source == self.source,
                        STAGING.c.resource_type == HL7_TYPE,
                        STAGING.c.resource_id == ident,
                    )
                ).scalar_one()
                err = msg.header_error
                replace_errors(
                    conn,
                    staging_id=staging_id,
                    source=self.source,
                    resource_type=HL7_TYPE,
                    resource_id=ident,
                    mapping="hl7v2-intake",
                    issues=[
                        Issue(
                            err.code if err else "hl7.missing_control_id",
                            err.message if err else "message has no control id (MSH-10)",
                            field=(err.field or "MSH") if err else "MSH-10",
                        )
                    ],
                )
            if acks:
                conn.execute(ACKS.insert(), acks)
        return outcomes

    def _row(self, msg: InboundMessage, ident: str, digest: str, status: str, now: Any) -> dict[str, Any]:
        return {
            "source": self.source,
            "resource_type": HL7_TYPE,
            "resource_id": ident[:256],
            "version_id": None,
            "last_updated": None,
            "content_type": HL7_CONTENT_TYPE,
            "content_hash": digest,
            "raw": msg.raw,
            "origin": msg.origin[:512],
            "status": status,
            "received_at": msg.received_at,
            "updated_at": now,
        }
