"""Limits every incoming JSON record must respect, checked the same way on every path.

A resource nested hundreds of levels deep still parses (orjson accepts 1,024 levels) but
cannot be re-serialised (orjson stops at 255) nor sensibly mapped; FHIR R4 resources nest a
few dozen levels at most (a Questionnaire's item tree is the deepest real case). So a record
deeper than ``MAX_DEPTH`` is refused as ``intake.record_too_deep`` wherever it enters: NDJSON
lines, Bundle entries, REST pages, Bulk files and HL7 v2 → FHIR output.

Errors about input that is not JSON say where and why in general terms
(``describe_json_error``), never quoting the input, which is patient data.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

# Well above any real FHIR resource, well below orjson's serialisation limit (255).
MAX_DEPTH = 100

TOO_DEEP_CODE = "intake.record_too_deep"
TOO_DEEP_MESSAGE = f"record is nested more than {MAX_DEPTH} levels deep"


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` (parsed JSON) nests objects/arrays deeper than ``limit``.

    Iterative, so the check itself cannot hit Python's recursion limit.
    """
    # Fast path (the walk costs ~50 us a resource, as much as staging it): nesting depth is at
    # most the number of openers, and braces inside strings only add to the count, so a
    # serialisation with no more than ``limit`` of them is shallow enough for certain.
    try:
        text = orjson.dumps(value)
    except TypeError:  # too deep for orjson itself, or not JSON data: the walk decides
        pass
    else:
        if text.count(b"{") + text.count(b"[") <= limit:
            return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


UTF8_BOM = b"\xef\xbb\xbf"

# orjson's reasons are fixed phrases ("unexpected character", "EOF while parsing a string");
# anything else (a future version quoting input) is replaced by a generic reason.
_PLAIN_REASON = re.compile(r"^[A-Za-z][A-Za-z ,]{0,80}$")


def is_too_deep_error(exc: orjson.JSONDecodeError) -> bool:
    """orjson refuses documents nested over 1,024 levels with this parse error."""
    return "depth limit" in exc.msg or "recursion" in exc.msg.lower()


def describe_json_error(exc: orjson.JSONDecodeError, data: bytes) -> str:
    """Why ``data`` is not JSON, by position and a generic reason, never quoting the input
    (parsers' messages can quote the text around the error: an MRN, a name)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"is not valid UTF-8 at byte {bad.start}"
    if is_too_deep_error(exc):
        return TOO_DEEP_MESSAGE
    reason = exc.msg if _PLAIN_REASON.match(exc.msg) else "syntax error"
    return f"is not valid JSON at line {exc.lineno} column {exc.colno} ({reason})"
