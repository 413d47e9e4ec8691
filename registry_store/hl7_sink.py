"""Durable storage of received HL7 v2 messages in staging (the MLLP listener's sink).

A message is staged raw, as ``HL7v2Message`` with identity ``<sending facility>|<MSH-10>``,
and committed before the listener acknowledges it, so nothing acknowledged is ever lost.
Where a message goes is decided by the one rule staging uses for raw messages
(``staging.place_raw_message``) on ``header.message_digest`` (the content apart from MSH-7):
the same message again, even restamped by a retransmitting engine, is a duplicate,
acknowledged (AA) and not staged twice; a control id reused for other content is a different
message, staged beside the first as ``<identity>#<digest[:12]>`` with a warning
(``hl7.reused_control_id``) so staff see it. Messages whose header cannot be accepted are kept too
(``invalid`` with their error, identity ``rejected|sha256-...``; a resend of one is not staged
twice), and every answer is logged in ``hl7_acks`` for the feed-health page (``delivered``
false when the listener could not write it: ``ack_undelivered``). Rows are inserted
with ``ON CONFLICT DO NOTHING``: should another process stage the same identity meanwhile, the
message is placed again against what it wrote, never failing the batch. Conversion to FHIR
happens later, in batches, in the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, select, update

from adapters.hl7v2.header import message_digest
from adapters.hl7v2.mllp import InboundMessage, StoreOutcome, StoreStatus
from adapters.hl7v2.records import (
    HL7_CONTENT_TYPE,
    HL7_TYPE,
    message_identity,
    reused_control_id_issue,
)
from registry_store.errors import replace_errors
from registry_store.staging import (
    ORIGIN_MAX,
    StagedRow,
    insert_new_rows,
    place_raw_message,
    raw_message_identities,
    staged_rows,
    until_settled,
)
from registry_store.tables import HL7_ACKS, STAGING
from registry_store.timeutil import utcnow
from registry_types.issues import Issue

log = structlog.get_logger(__name__)


# Unreachable through the listener (its header check rejects an empty MSH-10), but the
# ``MessageSink`` protocol allows a message without a control id and no header error.
_NO_CONTROL_ID = "message has no control id (MSH-10)"


@dataclass(slots=True)
class _Message:
    msg: InboundMessage
    ident: str  # before placement: <facility>|<MSH-10>, or rejected|sha256-... for a rejected one
    digest: str
    reason: str | None  # why it is rejected; None: accepted


class StagingSink:
    """``MessageSink`` on the registry store; called from the listener's one writer thread."""

    def __init__(self, engine: Engine, source: str):
        self.engine = engine
        self.source = source

    def store(self, messages: Sequence[InboundMessage]) -> Sequence[StoreOutcome]:
        now = utcnow()
        items = [self._message(m) for m in messages]
        with self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                # An ACK promises durability: fsync this commit even if power fails.
                conn.exec_driver_sql("PRAGMA synchronous=FULL")
            stored: dict[int, str] = {}  # position in ``messages`` -> identity of its new row
            until_settled(
                lambda todo: self._stage_round(conn, items, todo, stored, now), list(range(len(items)))
            )
            for pos, ident in stored.items():
                if items[pos].reason is not None:
                    self._record_error(conn, items[pos].msg, ident)
                elif ident != items[pos].ident:
                    self._record_reused(conn, items[pos].msg, ident)
            ack_ids = conn.execute(
                HL7_ACKS.insert().returning(HL7_ACKS.c.id, sort_by_parameter_order=True),
                [self._ack(item) for item in items],
            ).scalars().all()
        return [
            self._outcome(item, pos in stored, ack_id)
            for pos, (item, ack_id) in enumerate(zip(items, ack_ids, strict=True))
        ]

    def ack_undelivered(self, ack_ids: Sequence[int]) -> None:
        """The listener could not write these ACKs: the sender never saw them (and resends)."""
        with self.engine.begin() as conn:
            conn.execute(update(HL7_ACKS).where(HL7_ACKS.c.id.in_(list(ack_ids))).values(delivered=False))

    def _stage_round(
        self,
        conn: Connection,
        items: Sequence[_Message],
        todo: Sequence[int],
        stored: dict[int, str],
        now: datetime,
    ) -> list[int]:
        """Place and insert the messages at ``todo``; returns those to place again."""
        staged = staged_rows(
            conn,
            self.source,
            (
                (HL7_TYPE, ident)
                for pos in todo
                for ident in raw_message_identities(items[pos].ident, items[pos].digest)
            ),
        )
        rows: list[dict[str, Any]] = []
        placed: list[int] = []
        for pos in todo:
            item = items[pos]
            ident, already = place_raw_message(HL7_TYPE, item.ident, item.digest, staged)
            if already:
                continue
            status = "pending" if item.reason is None else "invalid"
            # A later message of this batch with the same identity sees this one.
            staged[(HL7_TYPE, ident)] = StagedRow(None, item.digest, None, status)
            rows.append(self._row(item.msg, ident, item.digest, status, now))
            placed.append(pos)
            stored[pos] = ident
        lost = [placed[i] for i in insert_new_rows(conn, rows)]
        for pos in lost:
            del stored[pos]
        return lost

    @staticmethod
    def _message(msg: InboundMessage) -> _Message:
        digest = message_digest(msg.raw)
        if msg.header_error is None and msg.dedup_key is not None:
            return _Message(msg, message_identity(*msg.dedup_key), digest, None)
        reason = msg.header_error.message if msg.header_error else _NO_CONTROL_ID
        return _Message(msg, f"rejected|sha256-{digest[:40]}", digest, reason)

    @staticmethod
    def _outcome(item: _Message, stored: bool, ack_id: int) -> StoreOutcome:
        if item.reason is not None:
            return StoreOutcome(StoreStatus.REJECTED, item.reason, ack_id)
        return StoreOutcome(StoreStatus.STORED if stored else StoreStatus.DUPLICATE, ack_id=ack_id)

    def _ack(self, item: _Message) -> dict[str, Any]:
        msg, err = item.msg, item.msg.header_error
        header = msg.header or (err.header if err else None)
        return {
            "received_at": msg.received_at,
            "source": self.source,
            "sending_facility": header.sending_facility if header else None,
            "control_id": header.control_id if header else None,
            "message_type": header.message_type if header else None,
            "ack_code": "AA" if item.reason is None else (err.ack_code if err else "AR"),
            "error": item.reason,
        }

    def _staging_id(self, conn: Connection, ident: str) -> int:
        return int(
            conn.execute(
                select(STAGING.c.id).where(
                    STAGING.c.source == self.source,
                    STAGING.c.resource_type == HL7_TYPE,
                    STAGING.c.resource_id == ident,
                )
            ).scalar_one()
        )

    def _record_reused(self, conn: Connection, msg: InboundMessage, ident: str) -> None:
        """Staff see a reused control id at once, not only after conversion (which repeats
        the same warning, under the same mapping, so re-mapping keeps it open)."""
        assert msg.dedup_key is not None
        replace_errors(
            conn,
            staging_id=self._staging_id(conn, ident),
            source=self.source,
            resource_type=HL7_TYPE,
            resource_id=ident,
            mapping="hl7v2",
            issues=[reused_control_id_issue(*msg.dedup_key)],
        )
        log.warning("hl7.reused_control_id", source=self.source, identity=ident)

    def _record_error(self, conn: Connection, msg: InboundMessage, ident: str) -> None:
        staging_id = self._staging_id(conn, ident)
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
                    err.message if err else _NO_CONTROL_ID,
                    field=(err.field or "MSH") if err else "MSH-10",
                )
            ],
        )

    def _row(
        self, msg: InboundMessage, ident: str, digest: str, status: str, now: datetime
    ) -> dict[str, Any]:
        return {
            "source": self.source,
            "resource_type": HL7_TYPE,
            "resource_id": ident,
            "version_id": None,
            "last_updated": None,
            "content_type": HL7_CONTENT_TYPE,
            "content_hash": digest,
            "raw": msg.raw,
            "origin": msg.origin[:ORIGIN_MAX],
            "status": status,
            "received_at": msg.received_at,
            "updated_at": now,
        }
