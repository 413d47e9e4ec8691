"""HL7 v2 messages as staged records, and their conversion into FHIR records.

Raw v2 messages are staged as they came (type ``HL7v2Message``, identity ``<sending
facility>|<MSH-10>``) so a fixed v2 mapping can convert them again without asking the
hospital to resend. Conversion yields ordinary FHIR records, which then go the one way every
record goes: staging, the mapping engine, cases.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from adapters.base import Record, RecordError
from adapters.hl7v2.convert import convert_message
from adapters.hl7v2.files import FileMessageError, iter_messages
from adapters.hl7v2.header import HeaderCheckError, MessageHeader, read_header
from registry_types.issues import Issue

HL7_TYPE = "HL7v2Message"
HL7_CONTENT_TYPE = "application/hl7-v2"


# A warning, not an error: the message is kept and converted; staff should ask the sender why
# its control ids repeat (usually a counter reset), since real duplicates are then undetectable.
REUSED_CONTROL_ID = "hl7.reused_control_id"


def message_identity(facility: str, control_id: str) -> str:
    return f"{facility}|{control_id}"[:256]


def reused_control_id_issue(facility: str, control_id: str) -> Issue:
    """The warning on a message staged beside another with its facility and control id.

    One cause for all such messages (no ``value``): the fix is at the sender, not per message.
    Facility and control id are header metadata, not patient data.
    """
    return Issue(
        REUSED_CONTROL_ID,
        f"control id {control_id[:50]!r} (MSH-10) of sending facility {facility[:50]!r} (MSH-4) "
        "was already used by a message with other content; this one is staged as a separate "
        "message. Ask the sender why its control ids repeat.",
        field="MSH-10",
        rule="hl7v2:MSH",
        severity="warning",
    )


def reused_control_id(header: MessageHeader | None, raw: bytes, identity: str) -> Issue | None:
    """The warning for a staged message whose identity is not its own ``facility|MSH-10``
    (``staging.place_raw_message`` put it beside another message with that control id).

    ``header``: the one conversion already read, if it got that far; else MSH is read here."""
    if header is None:
        try:
            header = read_header(raw, versions=(), message_types=())
        except HeaderCheckError:
            return None
    if identity == message_identity(header.sending_facility, header.control_id):
        return None
    return reused_control_id_issue(header.sending_facility, header.control_id)


def looks_like_hl7v2(head: bytes) -> bool:
    """A v2 file starts with an MSH segment, or an MLLP start block before one."""
    head = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith((b"MSH", b"\x0b"))


def records_from_file(path: Path, display_name: str | None = None) -> Iterator[Record | RecordError]:
    """Every message of a v2 file as a raw staged record; unusable ones as errors."""
    name = display_name or path.name
    for item in iter_messages(path):
        origin = f"{name}#{item.index}"
        if isinstance(item, FileMessageError):
            yield RecordError(
                origin,
                item.code,
                f"{name} message {item.index}: {item.message}",
                raw=item.raw or None,
                resource_type=HL7_TYPE,
            )
            continue
        try:
            # Any message type is staged; conversion decides what is ours (an ADT^A02 transfer
            # is out of scope, not an error). The MLLP listener checks types before its ACK.
            header = read_header(item.raw, message_types=())
        except HeaderCheckError as exc:
            err = exc.error
            yield RecordError(
                origin,
                err.code,
                f"{name} message {item.index}: {err.message}",
                field=err.field or "MSH",
                raw=item.raw,
                resource_type=HL7_TYPE,
            )
            continue
        ident = message_identity(header.sending_facility, header.control_id)
        yield Record(
            {"resourceType": HL7_TYPE, "id": ident}, origin, raw=item.raw, content_type=HL7_CONTENT_TYPE
        )


@dataclass
class Converted:
    records: list[Record] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    # (merged patient id, surviving patient id) of an ADT^A40/A47: the store moves the
    # merged patient's records, cases and reminders (registry_store/patient_merge.py).
    merges: list[tuple[str, str]] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(i.severity != "warning" for i in self.issues) and not (self.records or self.deleted)

    @property
    def out_of_scope(self) -> bool:
        """A message type we do not convert (transfers, orders, ...): nothing to map."""
        errors = [i for i in self.issues if i.severity != "warning"]
        return bool(errors) and all(i.code == "hl7.unsupported_message" for i in errors)


def converted_origin(identity: str) -> str:
    """The staging origin of the FHIR records a v2 message converts into (no PHI)."""
    return f"hl7v2 {identity}"


def convert_staged(raw: bytes, identity: str, tz: ZoneInfo) -> Converted:
    """A staged v2 message → FHIR records (origin: the message identity, no PHI)."""
    result = convert_message(raw, source=identity, tz=tz)
    out = Converted()
    for resource in result.resources:
        out.records.append(Record(resource, origin=converted_origin(identity)))
        merged_into = _replaced_by(resource)
        if merged_into is not None:
            out.merges.append((resource["id"], merged_into))
    out.deleted.extend(result.deleted)
    reused = reused_control_id(result.header, raw, identity)
    if reused is not None:
        # Re-issued on every conversion so re-mapping keeps the warning open, not resolved.
        out.issues.append(reused)
    for issue in result.errors:
        where = issue.field or issue.segment or ""
        out.issues.append(
            Issue(
                issue.code,
                issue.message,
                field=where,
                rule=f"hl7v2:{issue.segment}" if issue.segment else "hl7v2",
                severity="warning" if issue.severity == "warning" else "error",
            )
        )
    return out


def _replaced_by(resource: dict[str, Any]) -> str | None:
    """The surviving patient's id when ``resource`` is a Patient marked ``replaced-by``."""
    if resource.get("resourceType") != "Patient":
        return None
    for link in resource.get("link") or []:
        ref = (link.get("other") or {}).get("reference", "")
        if link.get("type") == "replaced-by" and ref.startswith("Patient/"):
            return str(ref.removeprefix("Patient/"))
    return None
