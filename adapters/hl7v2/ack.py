"""HL7 acknowledgements (original mode): AA, or AE/AR with an ERR segment saying why.

The ACK echoes MSH-3..6 swapped (we answer as the application the sender addressed), MSH-10
in MSA-2, the trigger event, processing id and version. ERR uses the 2.5+ layout (ERR-2
location, ERR-3 table 0357 code, ERR-4 severity, ERR-8 text) and the ERR-1 composite before
2.5. Texts are ours (codes and field names, never message values).
"""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime
from types import SimpleNamespace

import hl7.util

from adapters.hl7v2.header import MessageHeader, table_0357_text

_SEPARATORS = SimpleNamespace(esc="\\", separators="\r|~^&")
_counter = itertools.count(1)
_PREFIX = f"{os.getpid():x}"


def _esc(text: str) -> str:
    return str(hl7.util.escape(_SEPARATORS, text)) if text else ""


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (2, 5, 1)


def build_ack(
    header: MessageHeader | None,
    ack_code: str,
    *,
    err_code: str | None = None,
    text: str | None = None,
    location: str | None = None,
    now: datetime | None = None,
) -> bytes:
    """An ACK for ``header`` (None when the message had no readable MSH).

    ``location`` is a field name such as "MSH-10" (→ ERR-2 MSH^1^10).
    """
    now = now or datetime.now(UTC)
    h = header
    version = h.version if h and h.version and _version_tuple(h.version) >= (2, 1) else "2.5.1"
    if h and not all(c.isdigit() or c == "." for c in version):
        version = "2.5.1"
    # Header fields are echoed as sent (their components included) when the sender uses the
    # standard encoding characters; with others, they are escaped so the ACK stays parseable.
    echo = (lambda v: v) if h is None or h.encoding_characters[:4] == "^~\\&" else _esc
    fields = [
        "MSH",
        "^~\\&",
        echo(h.receiving_application) if h else "",
        echo(h.receiving_facility) if h else "",
        echo(h.sending_application) if h else "",
        echo(h.sending_facility) if h else "",
        now.strftime("%Y%m%d%H%M%S") + "+0000",
        "",
        f"ACK^{echo(h.trigger_event)}^ACK" if h and h.trigger_event else "ACK",
        f"{_PREFIX}-{next(_counter)}",
        echo(h.processing_id) if h and h.processing_id else "P",
        version,
    ]
    segments = ["|".join(fields)]
    msa = ["MSA", ack_code, echo(h.control_id) if h else ""]
    new_err = _version_tuple(version) >= (2, 5)
    if text and not new_err:
        msa.append(_esc(text)[:80])  # MSA-3 text message (deprecated in 2.5+)
    segments.append("|".join(msa))
    if err_code:
        code_cwe = f"{err_code}^{_esc(table_0357_text(err_code))}^HL70357"
        loc = ""
        if location and "-" in location:
            seg, _, fld = location.partition("-")
            loc = f"{seg}^1^{fld}" if fld.isdigit() else seg
        elif location:
            loc = location
        if new_err:
            err = ["ERR", "", loc, code_cwe, "E" if ack_code != "AA" else "W", "", "", "",
                   _esc(text or "")]
        else:
            eld = f"{loc}^{err_code}&{_esc(table_0357_text(err_code))}&HL70357"
            err = ["ERR", eld]
        segments.append("|".join(err).rstrip("|"))
    return ("\r".join(segments) + "\r").encode("utf-8")


def ack_code_of(ack: bytes) -> str:
    """MSA-1 of an ACK (``AA``/``AE``/``AR``…), for metrics; ``unknown`` if it has none."""
    sep = ack[3:4] or b"|"
    for segment in ack.split(b"\r"):
        if segment.startswith(b"MSA" + sep):
            fields = segment.split(sep)
            return fields[1].decode("ascii", "replace") if len(fields) > 1 else "unknown"
    return "unknown"
