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
import threading
from typing import Any

import orjson

# Well above any real FHIR resource, well below orjson's serialisation limit (255).
MAX_DEPTH = 100

TOO_DEEP_CODE = "intake.record_too_deep"
TOO_DEEP_MESSAGE = f"record is nested more than {MAX_DEPTH} levels deep"


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` (parsed JSON) nests objects/arrays deeper than ``limit``.

    Asked of every record at intake, so orjson answers in C where it can (the walk costs
    ~10 µs a resource, as much as staging it):

    1. nesting depth is at most the number of openers in the serialisation (braces inside
       strings only add to the count), so no more than ``limit`` of them is shallow enough;
    2. else orjson refuses to serialise more than ``_ORJSON_DEPTH`` nested containers, and
       ``value`` under ``_ORJSON_DEPTH - limit`` extra arrays fails exactly when it is deeper
       than ``limit`` (orjson counts every dict and list, and more: tuples, dataclasses);
    3. when orjson cannot say (too deep even for it, or a value it cannot write), the walk.
    """
    try:
        text = orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError included
        pass
    else:
        if text.count(b"{") + text.count(b"[") <= limit:
            return False
        wrapper = _wrapper(limit)
        if wrapper is not None:
            outer, slot = wrapper
            slot[0] = value
            try:
                orjson.dumps(outer)
            except TypeError:
                pass
            else:
                return False
            finally:
                slot[0] = None
    return _walk_too_deep(value, limit)


def _walk_too_deep(value: Any, limit: int) -> bool:
    """``too_deep`` by walking; iterative, so it cannot hit Python's recursion limit."""
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


def _orjson_depth() -> int | None:
    """How many nested arrays orjson serialises (254 in orjson 3.x); None if it has no limit
    this side of 4,096 or does not refuse in the expected way."""
    low, high = 1, 4096  # orjson serialises ``low`` levels; ``high`` is above its limit
    if _serialises(low) is not True or _serialises(high) is not False:
        return None
    while high - low > 1:
        middle = (low + high) // 2
        if _serialises(middle):
            low = middle
        else:
            high = middle
    return low


def _serialises(depth: int) -> bool | None:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return False
    except Exception:
        return None
    return True


_ORJSON_DEPTH = _orjson_depth()
# Per thread (a wrapper is filled in place), per limit: (outermost array, innermost array).
_WRAPPERS = threading.local()


def _wrapper(limit: int) -> tuple[list[Any], list[Any]] | None:
    if _ORJSON_DEPTH is None or not 1 <= limit < _ORJSON_DEPTH:
        return None
    made: dict[int, tuple[list[Any], list[Any]]] | None = getattr(_WRAPPERS, "made", None)
    if made is None:
        made = _WRAPPERS.made = {}
    wrapper = made.get(limit)
    if wrapper is None:
        # ``_ORJSON_DEPTH - limit`` arrays around the value: the innermost holds it.
        slot: list[Any] = [None]
        outer = slot
        for _ in range(_ORJSON_DEPTH - limit - 1):
            outer = [outer]
        wrapper = made[limit] = (outer, slot)
    return wrapper


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
