"""The MLLP listener's sink on SQLite and PostgreSQL: what is acknowledged is staged, a
reused control id never costs a message, a resent rejected message never fails its batch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, select

from adapters.hl7v2.header import (
    HeaderCheckError,
    HeaderError,
    MessageHeader,
    message_digest,
    read_header,
)
from adapters.hl7v2.mllp import InboundMessage, StoreStatus
from adapters.hl7v2.records import HL7_TYPE
from registry_adapter.app import App
from registry_adapter.pipeline import Pipeline
from registry_store.hl7_sink import StagingSink
from registry_store.tables import HL7_ACKS as ACKS
from registry_store.tables import MAPPING_ERRORS as ERRORS
from registry_store.tables import STAGING


def adt(control_id: str, visit: str = "V1") -> bytes:
    return (
        "MSH|^~\\&|ADT|SPINEHOSP|REGISTRY|SITE|20250304120000||ADT^A08^ADT_A01|"
        f"{control_id}|P|2.5.1\rPID|1||MRN1^^^SPINEHOSP^MR\rPV1|1|I|||||||||||||||||{visit}\r"
    ).encode()


def inbound(raw: bytes) -> InboundMessage:
    """As the listener builds it: the header check's result, good or not."""
    header: MessageHeader | None
    error: HeaderError | None = None
    try:
        header = read_header(raw)
    except HeaderCheckError as exc:
        header, error = exc.error.header, exc.error
    return InboundMessage(raw, header, error, datetime.now(UTC), "mllp:127.0.0.1:5000#1")


def staged(app: App) -> dict[str, Any]:
    with app.engine.connect() as conn:
        return {
            r.resource_id: r for r in conn.execute(select(STAGING).where(STAGING.c.resource_type == HL7_TYPE))
        }


def statuses(outcomes: Any) -> list[StoreStatus]:
    return [o.status for o in outcomes]


def short(raw: bytes) -> str:
    return message_digest(raw)[:12]


def restamped(raw: bytes, when: bytes = b"20250305093000") -> bytes:
    """The same message as a retransmitting engine sends it: MSH-7 stamped afresh."""
    out = raw.replace(b"|20250304120000|", b"|" + when + b"|", 1)
    assert out != raw
    return out


def open_errors(app: App) -> list[Any]:
    with app.engine.connect() as conn:
        return list(
            conn.execute(
                select(ERRORS.c.resource_id, ERRORS.c.code, ERRORS.c.field, ERRORS.c.severity)
                .where(ERRORS.c.status == "open")
                .order_by(ERRORS.c.id)
            )
        )


def test_a_resend_is_a_duplicate_and_a_reused_control_id_is_kept(app: App) -> None:
    sink = StagingSink(app.engine, "mllp")
    first, other = adt("MSG1", "V1"), adt("MSG1", "V2")
    assert statuses(sink.store([inbound(first)])) == [StoreStatus.STORED]
    # Same bytes again: acknowledged as duplicate, not staged twice.
    assert statuses(sink.store([inbound(first)])) == [StoreStatus.DUPLICATE]
    # Same control id, other content: a different message (sender bug), kept beside the first.
    assert statuses(sink.store([inbound(other)])) == [StoreStatus.STORED]
    rows = staged(app)
    assert set(rows) == {"SPINEHOSP|MSG1", f"SPINEHOSP|MSG1#{short(other)}"}
    assert rows["SPINEHOSP|MSG1"].raw == first and rows[f"SPINEHOSP|MSG1#{short(other)}"].raw == other
    # Resends of either are duplicates.
    assert statuses(sink.store([inbound(other), inbound(first)])) == [StoreStatus.DUPLICATE] * 2
    assert len(staged(app)) == 2


def test_a_retransmission_with_a_new_msh7_is_acknowledged_not_staged_again(app: App) -> None:
    sink = StagingSink(app.engine, "mllp")
    first = adt("MSG7")
    assert statuses(sink.store([inbound(first)])) == [StoreStatus.STORED]
    # The sending engine restamped MSH-7 on its retries: same message, same control id.
    out = sink.store([inbound(restamped(first)), inbound(restamped(first, b"20250306000000"))])
    assert statuses(out) == [StoreStatus.DUPLICATE] * 2
    rows = staged(app)
    assert list(rows) == ["SPINEHOSP|MSG7"] and rows["SPINEHOSP|MSG7"].raw == first
    assert open_errors(app) == []
    with app.engine.connect() as conn:
        acks = conn.execute(select(ACKS.c.ack_code)).scalars().all()
    assert acks == ["AA"] * 3


def test_a_reused_control_id_is_staged_with_a_warning_that_survives_conversion(app: App) -> None:
    sink = StagingSink(app.engine, "mllp")
    first, other = adt("MSG8", "V1"), adt("MSG8", "V2")
    assert statuses(sink.store([inbound(first)])) == [StoreStatus.STORED]
    # Other content (here PV1-19) under the same control id, restamped too: not a duplicate.
    assert statuses(sink.store([inbound(restamped(other))])) == [StoreStatus.STORED]
    second = f"SPINEHOSP|MSG8#{short(other)}"
    rows = staged(app)
    assert set(rows) == {"SPINEHOSP|MSG8", second} and rows[second].raw == restamped(other)
    warning = (second, "hl7.reused_control_id", "MSH-10", "warning")
    assert [tuple(e) for e in open_errors(app)] == [warning]
    # Conversion re-derives the warning: it stays open, and both messages are converted.
    Pipeline(app).map_pending(["mllp"])
    assert [tuple(e) for e in open_errors(app) if e.code == "hl7.reused_control_id"] == [warning]
    rows = staged(app)
    assert rows["SPINEHOSP|MSG8"].status == rows[second].status == "mapped"
    with app.engine.connect() as conn:
        encounters = conn.execute(
            select(STAGING.c.resource_id).where(STAGING.c.resource_type == "Encounter")
        ).all()
    assert len(encounters) == 2  # one per visit: neither message was lost


def test_a_reused_control_id_within_one_batch_keeps_both(app: App) -> None:
    sink = StagingSink(app.engine, "mllp")
    first, other = adt("MSG2", "V1"), adt("MSG2", "V2")
    out = sink.store([inbound(first), inbound(other), inbound(other)])
    assert statuses(out) == [StoreStatus.STORED, StoreStatus.STORED, StoreStatus.DUPLICATE]
    rows = staged(app)
    assert rows["SPINEHOSP|MSG2"].raw == first and rows[f"SPINEHOSP|MSG2#{short(other)}"].raw == other


def test_a_resent_rejected_message_does_not_fail_its_batch(app: App) -> None:
    sink = StagingSink(app.engine, "mllp")
    bad = b"this is not an HL7 message\r"
    assert statuses(sink.store([inbound(bad)])) == [StoreStatus.REJECTED]
    out = sink.store([inbound(adt("MSG3")), inbound(bad)])
    assert statuses(out) == [StoreStatus.STORED, StoreStatus.REJECTED]
    rows = staged(app)
    assert rows["SPINEHOSP|MSG3"].status == "pending"
    rejected = [r for r in rows.values() if r.resource_id.startswith("rejected|")]
    assert len(rejected) == 1 and rejected[0].status == "invalid" and rejected[0].raw == bad
    with app.engine.connect() as conn:
        errors = conn.execute(select(ERRORS.c.code).where(ERRORS.c.staging_id == rejected[0].id)).all()
        acks = conn.execute(select(ACKS.c.ack_code, ACKS.c.control_id).order_by(ACKS.c.id)).all()
    assert [e.code for e in errors] == ["hl7.no_msh"]
    assert [tuple(a) for a in acks] == [("AR", None), ("AA", "MSG3"), ("AR", None)]


@contextmanager
def before_staging_insert(app: App, action: Any) -> Iterator[None]:
    """Run ``action`` once, on another connection, just before a staging INSERT: the race of
    two processes staging the same new identity, made deterministic."""
    fired: list[bool] = []

    def hook(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not fired and statement.lstrip().upper().startswith("INSERT INTO STAGING"):
            fired.append(True)
            action()

    event.listen(app.engine, "before_cursor_execute", hook)
    try:
        yield
    finally:
        event.remove(app.engine, "before_cursor_execute", hook)
    assert fired


def test_a_control_id_staged_concurrently_by_another_process_loses_nothing(app: App) -> None:
    sink, rival = StagingSink(app.engine, "mllp"), StagingSink(app.engine, "mllp")
    theirs, ours, same = adt("MSG4", "V1"), adt("MSG4", "V2"), adt("MSG5")

    def other_process() -> None:
        assert statuses(rival.store([inbound(theirs), inbound(same)])) == [StoreStatus.STORED] * 2

    with before_staging_insert(app, other_process):
        out = sink.store([inbound(ours), inbound(same)])
    assert statuses(out) == [StoreStatus.STORED, StoreStatus.STORED]
    rows = staged(app)
    assert rows["SPINEHOSP|MSG4"].raw == theirs and rows[f"SPINEHOSP|MSG4#{short(ours)}"].raw == ours
    assert rows["SPINEHOSP|MSG5"].raw == same and len(rows) == 3
