"""HL7 v2 bytes → decoded, line-ending-normalised message with the mapped segments split.

One parser for values: each segment a mapping reads is split positionally here (fields,
repetitions, components, subcomponents, escape sequences decoded); the message type was
already recognised from MSH alone (``header.read_header``) before anything is parsed, so a type
we do not convert costs nothing more. Segments no mapping reads (Z segments, IN1, ...) are kept
as text only; the raw message is staged anyway.

Where hl7apy stands (settled, issue 14): it is not on the hot path. Its TOLERANT
``parse_segment`` used to gate every mapped segment and then be discarded: ~90 % of conversion
time (32 msg/s end to end) while accepting everything a test could craft. It remains
available, off by default: ``hl7apy_parse: true`` in messages.yaml restores that gate, and
``strict_check: true`` runs its STRICT datatype/length/cardinality checks as warnings naming
segment and field (``_locate_field``), the check worth its cost when onboarding a new feed.
(``parse_message`` is never used: 20-110 ms on real ADTs, and with ``find_groups=True`` it
silently drops Z and out-of-place segments, crs4/hl7apy #89, #145.)

Values are returned positionally (field → repetitions → components → subcomponents, escape
sequences decoded) so mappings address ``PID-3.4.1`` the same way in 2.3 and 2.8, where hl7apy
names the same component differently (CE_1 / CWE_1, TS_1 ...).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from types import SimpleNamespace

import hl7.util
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_field, parse_segment

from adapters.hl7v2.config import HL7Config, load_config
from adapters.hl7v2.header import HeaderCheckError, MessageHeader, read_header

# python-hl7's unescape logs the whole field value on a bad escape sequence: that is PHI, so
# its module logger is silenced (we report bad escapes ourselves, without the value).
logging.getLogger(hl7.util.__file__).disabled = True

Repetition = list[list[str]]  # components → subcomponents


@dataclass(frozen=True, slots=True)
class ParseIssue:
    code: str
    message: str
    segment: str | None = None
    field: str | None = None
    severity: str = "error"


class HL7ParseError(ValueError):
    """The message cannot be parsed at all (no usable MSH, undecodable bytes...)."""

    def __init__(self, issue: ParseIssue) -> None:
        super().__init__(issue.message)
        self.issue = issue


@dataclass(slots=True)
class Segment:
    name: str
    position: int  # 1-based position in the message
    text: str
    fields: list[list[Repetition]] | None = None  # fields[n] = repetitions of SEG-n; None = not parsed

    def field(self, n: int) -> list[Repetition]:
        if self.fields is None or n >= len(self.fields):
            return []
        return self.fields[n]


@dataclass(slots=True)
class ParsedMessage:
    header: MessageHeader
    segments: list[Segment]
    text: str
    issues: list[ParseIssue] = field(default_factory=list)

    def find(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]


def normalise_line_endings(text: str) -> str:
    """Segments end with \\r in HL7; files and some feeds use \\n or \\r\\n."""
    return text.replace("\r\n", "\r").replace("\n", "\r")


def decode(raw: bytes, header: MessageHeader | None, cfg: HL7Config) -> tuple[str, list[ParseIssue]]:
    """Decode with the MSH-18 character set; without one, UTF-8 else Windows-1252 (warned)."""
    issues: list[ParseIssue] = []
    charset = (header.charset if header else "").upper()
    codec = cfg.charsets.get(charset)
    if codec is None:
        issues.append(
            ParseIssue(
                "hl7.unknown_charset",
                f"MSH-18 character set {charset[:20]!r} unknown; decoded as UTF-8",
                "MSH",
                "MSH-18",
                "warning",
            )
        )
        codec = "utf-8"
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as exc:
        if charset:
            raise HL7ParseError(
                ParseIssue(
                    "hl7.bad_encoding",
                    f"bytes at offset {exc.start} are not valid {codec} (MSH-18 {charset})",
                    "MSH",
                    "MSH-18",
                )
            ) from exc
        text = raw.decode("cp1252", errors="replace")
        issues.append(
            ParseIssue(
                "hl7.charset_guessed",
                f"no MSH-18 and bytes at offset {exc.start} are not UTF-8; decoded as Windows-1252",
                "MSH",
                "MSH-18",
                "warning",
            )
        )
    return text.lstrip("\ufeff"), issues


def _split_fields(
    text: str, header: MessageHeader, max_repetitions: int, seg_name: str, issues: list[ParseIssue]
) -> list[list[Repetition]]:
    """Positional split with escape decoding (hl7apy has validated the segment already)."""
    fs = header.field_separator
    enc4 = (header.encoding_characters + "    ")[:4]
    comp, rep, esc, sub = enc4[0], enc4[1], enc4[2], enc4[3]
    container: SimpleNamespace | None = None  # python-hl7's unescape context, made when needed
    parts = text.split(fs)
    if seg_name == "MSH":
        # MSH-1 is the field separator itself and MSH-2 is not split.
        parts = [parts[0], fs, parts[1], *parts[2:]]
    fields: list[list[Repetition]] = [[[[parts[0]]]]]
    for n, value in enumerate(parts[1:], start=1):
        if seg_name == "MSH" and n <= 2:
            fields.append([[[value]]])
            continue
        reps = value.split(rep) if value else []
        if len(reps) > max_repetitions:
            issues.append(
                ParseIssue(
                    "hl7.too_many_repetitions",
                    f"{seg_name}-{n} has {len(reps)} repetitions; only the first "
                    f"{max_repetitions} are converted (the raw message is kept)",
                    seg_name,
                    f"{seg_name}-{n}",
                )
            )
            reps = reps[:max_repetitions]
        if esc in value:
            if container is None:
                container = SimpleNamespace(esc=esc, separators="\r" + fs + rep + comp + sub)
            fields.append(
                [
                    [[hl7.util.unescape(container, s) for s in c.split(sub)] for c in r.split(comp)]
                    for r in reps
                ]
            )
        else:  # nothing to unescape (most fields): split only
            fields.append([[c.split(sub) for c in r.split(comp)] for r in reps])
    return fields


def _cap_repetitions(text: str, header: MessageHeader, limit: int) -> str:
    """Cut fields to ``limit`` repetitions before hl7apy sees them: it needs ~0.4 ms per
    repetition (5,000 repetitions of PID-3 took 2 s). The excess is reported by _split_fields."""
    rep = header.encoding_characters[1]
    if text.count(rep) <= limit:
        return text
    fs = header.field_separator
    return fs.join(rep.join(f.split(rep)[:limit]) for f in text.split(fs))


def _locate_field(
    text: str, name: str, header: MessageHeader, enc: dict[str, str],
    level: int = VALIDATION_LEVEL.TOLERANT,
) -> str | None:
    """Which field of a segment hl7apy chokes on (only called after a failure)."""
    for n, value in enumerate(text.split(header.field_separator)[1:], start=1):
        if not value:
            continue
        try:
            parse_field(
                value,
                name=f"{name}_{n}",
                version=header.version,
                encoding_chars=enc,
                validation_level=level,
            )
        except Exception:  # hl7apy raises many types, incl. builtins (see libraries.md 5.3)
            return f"{name}-{n}"
    return None


def _strict_check(
    text: str, name: str, position: int, header: MessageHeader, enc: dict[str, str],
    issues: list[ParseIssue],
) -> None:
    """Optional (strict_check in messages.yaml): hl7apy STRICT datatype/length/cardinality
    checks, reported as warnings naming segment and field. Off by default: most real feeds
    (and all FHIR-Converter samples) break some STRICT rule in fields nobody maps."""
    try:
        parse_segment(text, version=header.version, encoding_chars=enc,
                      validation_level=VALIDATION_LEVEL.STRICT)
    except Exception as exc:
        where = _locate_field(text, name, header, enc, VALIDATION_LEVEL.STRICT)
        issues.append(
            ParseIssue(
                "hl7.strict_violation",
                f"segment {name} (position {position})"
                + (f", field {where}" if where else "")
                + f" breaks hl7apy STRICT validation: {type(exc).__name__}",
                name,
                where,
                "warning",
            )
        )


def parse(
    raw: bytes | str,
    *,
    segments: Collection[str] | None = None,
    cfg: HL7Config | None = None,
) -> ParsedMessage:
    """Parse ``raw`` with hl7apy. ``segments``: which segments to parse (default: the ones the
    mappings use); others are kept as text. Raises HL7ParseError / HeaderCheckError when the
    message cannot be read at all; per-segment problems land in ``ParsedMessage.issues``."""
    cfg = cfg or load_config()
    wanted = cfg.segments_used if segments is None else frozenset(segments)
    raw_bytes = raw.encode("utf-8") if isinstance(raw, str) else raw
    # Header check with no type filter: an unsupported type is the converter's decision.
    header = read_header(raw_bytes, versions=cfg.versions, message_types=(),
                         allowed_field_separators=cfg.field_separators)
    issues: list[ParseIssue]
    if isinstance(raw, str):
        text, issues = raw.lstrip("\ufeff"), []
    else:
        text, issues = decode(raw_bytes, header, cfg)
    # One MLLP frame around the message is tolerated; framing inside it means several
    # messages were passed as one.
    text = normalise_line_endings(text).strip("\r\x0b\x1c \t")
    if "\x0b" in text or "\x1c" in text:
        raise HL7ParseError(
            ParseIssue(
                "hl7.embedded_framing",
                "MLLP frame characters inside the message: the input holds several framed "
                "messages (split it with adapters.hl7v2.files / framing)",
            )
        )
    enc = {
        "FIELD": header.field_separator,
        "COMPONENT": header.encoding_characters[0],
        "REPETITION": header.encoding_characters[1],
        "ESCAPE": header.encoding_characters[2],
        "SUBCOMPONENT": header.encoding_characters[3],
    }
    out: list[Segment] = []
    for position, seg_text in enumerate(filter(None, text.split("\r")), start=1):
        name = seg_text[:3]
        seg = Segment(name, position, seg_text)
        out.append(seg)
        if len(seg_text) > 3 and seg_text[3] != header.field_separator:
            issues.append(
                ParseIssue(
                    "hl7.bad_segment",
                    f"segment {position} does not start with a 3-character name and "
                    "field separator",
                    None,
                    None,
                )
            )
            continue
        if not name.isalnum() or not (name.isupper() or name.isdigit()):
            issues.append(
                ParseIssue("hl7.bad_segment", f"segment {position} has an invalid name", None)
            )
            continue
        if name not in wanted:
            continue
        checked_text = _cap_repetitions(seg_text, header, cfg.max_repetitions)
        try:
            if name != "MSH" and cfg.hl7apy_parse:
                parse_segment(
                    checked_text,
                    version=header.version,
                    encoding_chars=enc,
                    validation_level=VALIDATION_LEVEL.TOLERANT,
                )
        except Exception as exc:  # hl7apy: ParserError, InvalidName, ValueError, ...
            where = _locate_field(seg_text, name, header, enc)
            issues.append(
                ParseIssue(
                    "hl7.parse_error",
                    f"hl7apy cannot parse segment {name} (position {position})"
                    + (f", field {where}" if where else "")
                    + f": {type(exc).__name__}",
                    name,
                    where,
                )
            )
            continue
        if cfg.strict_check and name != "MSH":
            _strict_check(checked_text, name, position, header, enc, issues)
        seg.fields = _split_fields(seg_text, header, cfg.max_repetitions, name, issues)
    return ParsedMessage(header=header, segments=out, text=text, issues=issues)


__all__ = [
    "HL7ParseError",
    "HeaderCheckError",
    "ParseIssue",
    "ParsedMessage",
    "Segment",
    "normalise_line_endings",
    "parse",
]
