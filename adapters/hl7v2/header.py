"""Fast MSH check: enough of the header to dedup, route and acknowledge a message.

The listener must answer within a millisecond or two, long before a full parse (hl7apy costs
5-100 ms a message), so this module reads only the first segment with byte operations. It
decides whether the message can be accepted at all; everything else waits for ``parse``.
Error texts name fields and codes only, never values from the message (PHI).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass

from adapters.hl7v2.config import HL7Config, load_config

# HL7 table 0357 codes used in ERR segments.
ERR_SEGMENT_SEQUENCE = "100"
ERR_REQUIRED_FIELD_MISSING = "101"
ERR_DATA_TYPE = "102"
ERR_UNSUPPORTED_MESSAGE_TYPE = "200"
ERR_UNSUPPORTED_EVENT = "201"
ERR_UNSUPPORTED_VERSION = "203"
ERR_INTERNAL = "207"

_TABLE_0357_TEXT = {
    ERR_SEGMENT_SEQUENCE: "Segment sequence error",
    ERR_REQUIRED_FIELD_MISSING: "Required field missing",
    ERR_DATA_TYPE: "Data type error",
    ERR_UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    ERR_UNSUPPORTED_EVENT: "Unsupported event code",
    ERR_UNSUPPORTED_VERSION: "Unsupported version id",
    ERR_INTERNAL: "Application internal error",
}


def table_0357_text(code: str) -> str:
    return _TABLE_0357_TEXT.get(code, "Error")


@dataclass(frozen=True, slots=True)
class MessageHeader:
    """What MSH says about a message. Values are header metadata, not patient data."""

    field_separator: str
    encoding_characters: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_datetime: str
    message_code: str
    trigger_event: str
    message_structure: str
    control_id: str
    processing_id: str
    version: str
    charset: str

    @property
    def message_type(self) -> str:
        """``ADT^A08`` style, the key the mappings use."""
        return f"{self.message_code}^{self.trigger_event}"


@dataclass(frozen=True, slots=True)
class HeaderError:
    """Why a message cannot be accepted. ``ack_code`` is AE or AR (HL7 table 0008)."""

    code: str  # stable error code, e.g. "hl7.missing_control_id"
    message: str
    err_code: str  # HL7 table 0357
    ack_code: str
    field: str | None = None  # "MSH-10"
    header: MessageHeader | None = None  # what could be read, for the ACK's MSA-2 etc.


class HeaderCheckError(ValueError):
    def __init__(self, error: HeaderError) -> None:
        super().__init__(error.message)
        self.error = error


def _first_segment(raw: bytes) -> bytes | None:
    """The MSH segment, skipping a UTF-8 BOM and leading whitespace; None if there is none."""
    span = _msh_span(raw)
    return None if span is None else raw[span[0] : span[1]]


def _msh_span(raw: bytes) -> tuple[int, int] | None:
    """Where the MSH segment is in ``raw`` (start, end); None if the message has none."""
    start = 0
    n = len(raw)
    if raw.startswith(b"\xef\xbb\xbf"):
        start = 3
    while start < n and raw[start] in b" \t\r\n\x0b":  # \x0b: an MLLP start block
        start += 1
    if raw[start : start + 3] != b"MSH":
        return None
    end = n
    for terminator in (b"\r", b"\n"):
        pos = raw.find(terminator, start)
        if pos != -1 and pos < end:
            end = pos
    return start, end


def message_digest(raw: bytes) -> str:
    """sha256 of a message with MSH-7 (date/time of message) blanked: its dedup hash.

    Sending engines stamp MSH-7 afresh when they retransmit, so a resend of the same message
    under the same control id differs from the original only there. Any other difference is
    other content (a control id reused after a counter reset), which must never be taken for
    a duplicate. Bytes without an MSH segment are hashed as they are.
    """
    span = _msh_span(raw)
    if span is None or span[1] - span[0] < 4:
        return hashlib.sha256(raw).hexdigest()
    start, end = span
    fs = raw[start + 3 : start + 4]
    # MSH-1 is the separator itself, so MSH-7 is the 6th piece after splitting on it.
    fields = raw[start:end].split(fs)
    if len(fields) > 6:
        fields[6] = b""
    digest = hashlib.sha256(raw[:start])
    digest.update(fs.join(fields))
    digest.update(raw[end:])
    return digest.hexdigest()


def read_header(
    raw: bytes,
    *,
    versions: Collection[str] | None = None,
    message_types: Collection[str] | None = None,
    allowed_field_separators: str | None = None,
) -> MessageHeader:
    """Check the MSH segment of ``raw`` and return its header.

    Raises ``HeaderCheckError`` for: no MSH, a bad field separator or encoding characters,
    missing MSH-10 or MSH-9, an unsupported version (MSH-12) or message type (MSH-9).
    ``versions``/``message_types`` default to the ones in mappings/hl7v2/messages.yaml;
    pass an empty collection to skip that check.
    """
    cfg: HL7Config | None = None
    if versions is None or message_types is None or allowed_field_separators is None:
        cfg = load_config()
    if versions is None:
        assert cfg is not None
        versions = cfg.versions
    if message_types is None:
        assert cfg is not None
        message_types = cfg.messages.keys()
    if allowed_field_separators is None:
        assert cfg is not None
        allowed_field_separators = cfg.field_separators

    seg = _first_segment(raw)
    if seg is None and not raw.strip(b" \t\r\n\x0b\x1c"):
        raise HeaderCheckError(
            HeaderError("hl7.empty", "message is empty", ERR_SEGMENT_SEQUENCE, "AR", "MSH")
        )
    if seg is None:
        raise HeaderCheckError(
            HeaderError(
                "hl7.no_msh",
                "message does not start with an MSH segment",
                ERR_SEGMENT_SEQUENCE,
                "AR",
                "MSH",
            )
        )
    text = seg.decode("latin-1")  # header fields are ASCII; latin-1 never fails
    if len(text) < 8:
        raise HeaderCheckError(
            HeaderError("hl7.bad_msh", "MSH segment too short", ERR_SEGMENT_SEQUENCE, "AR", "MSH")
        )
    fs = text[3]
    if fs not in allowed_field_separators:
        raise HeaderCheckError(
            HeaderError(
                "hl7.bad_separator",
                f"MSH-1 field separator {fs!r} is not one of {allowed_field_separators!r}",
                ERR_DATA_TYPE,
                "AR",
                "MSH-1",
            )
        )
    parts = text.split(fs)
    enc = parts[1] if len(parts) > 1 else ""
    if len(enc) < 4 or len(set(enc[:4])) != 4 or fs in enc or enc[:1].isalnum():
        raise HeaderCheckError(
            HeaderError(
                "hl7.bad_encoding_characters",
                "MSH-2 encoding characters must be 4 distinct separators (e.g. ^~\\&)",
                ERR_DATA_TYPE,
                "AR",
                "MSH-2",
            )
        )
    comp = enc[0]
    # MSH-1 is the separator itself, so MSH-n is parts[n-1].
    def field(n: int) -> str:
        i = n - 1
        return parts[i] if i < len(parts) else ""

    def first(value: str) -> str:
        return value.split(comp, 1)[0]

    msg_type = field(9).split(comp)
    header = MessageHeader(
        field_separator=fs,
        encoding_characters=enc,
        sending_application=field(3),
        sending_facility=field(4),
        receiving_application=field(5),
        receiving_facility=field(6),
        message_datetime=first(field(7)),
        message_code=msg_type[0] if msg_type else "",
        trigger_event=msg_type[1] if len(msg_type) > 1 else "",
        message_structure=msg_type[2] if len(msg_type) > 2 else "",
        control_id=field(10).strip(),
        processing_id=first(field(11)),
        version=first(field(12)).strip(),
        charset=field(18).split(enc[1], 1)[0].strip() if len(enc) > 1 else field(18),
    )
    if not header.control_id:
        raise HeaderCheckError(
            HeaderError(
                "hl7.missing_control_id",
                "MSH-10 (message control id) is empty",
                ERR_REQUIRED_FIELD_MISSING,
                "AE",
                "MSH-10",
                header,
            )
        )
    if not header.message_code or not header.trigger_event:
        raise HeaderCheckError(
            HeaderError(
                "hl7.missing_message_type",
                "MSH-9 (message type) lacks message code or trigger event",
                ERR_REQUIRED_FIELD_MISSING,
                "AE",
                "MSH-9",
                header,
            )
        )
    if versions and header.version not in versions:
        shown = header.version if _is_version_like(header.version) else "<not a version>"
        raise HeaderCheckError(
            HeaderError(
                "hl7.unsupported_version",
                f"MSH-12 version {shown} is not supported (supported: {', '.join(versions)})",
                ERR_UNSUPPORTED_VERSION,
                "AR",
                "MSH-12",
                header,
            )
        )
    if message_types and header.message_type not in message_types:
        known_codes = {t.split("^", 1)[0] for t in message_types}
        err = (
            ERR_UNSUPPORTED_EVENT if header.message_code in known_codes
            else ERR_UNSUPPORTED_MESSAGE_TYPE
        )
        raise HeaderCheckError(
            HeaderError(
                "hl7.unsupported_message",
                f"MSH-9 message type {_safe_code(header.message_type)} is not supported",
                err,
                "AR",
                "MSH-9",
                header,
            )
        )
    return header


def _is_version_like(value: str) -> bool:
    return 0 < len(value) <= 8 and all(c.isdigit() or c == "." for c in value)


def _safe_code(value: str) -> str:
    """Message type codes are not PHI, but keep error texts printable and short."""
    cleaned = "".join(c if c.isalnum() or c in "^_" else "?" for c in value[:20])
    return cleaned or "<empty>"
