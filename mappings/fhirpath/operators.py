"""FHIRPath operators on collections: equality, comparison, arithmetic, logic, union.

Values are JSON values: str, int, float, bool, dict, list. Dates and times are ISO strings
(their JSON form); they compare as such, with the precision rules FHIRPath gives them.
"""

from __future__ import annotations

import math
from datetime import datetime
from functools import lru_cache
from typing import Any

from mappings.fhirpath.errors import FHIRPathEvaluationError
from mappings.fhirpath.fhir_types import DATETIME_RE, TIME_RE
from mappings.fhirpath.runtime import singleton, singleton_bool

_NUMBER = (int, float)


def is_number(value: Any) -> bool:
    cls = value.__class__
    return cls is int or cls is float


def items_equal(a: Any, b: Any) -> bool | None:
    """FHIRPath ``=`` on two single items (a Boolean never equals a number).

    None (FHIRPath's empty) when two date/times of different precision are compared;
    date/times with zones compare as instants (``08:30-05:00`` = ``13:30Z``).
    """
    ca, cb = a.__class__, b.__class__
    if ca is cb:
        if a == b:
            return True
        if ca is str and a[:1].isdigit() and b[:1].isdigit():
            order = _compare_strings(a, b)
            return None if order is None else order == 0
        return False
    if (ca is int or ca is float) and (cb is int or cb is float):
        return bool(a == b)
    return False


def equal(left: list[Any], right: list[Any]) -> list[Any]:
    if not left or not right:
        return []
    if len(left) != len(right):
        return [False]
    result: bool | None = True
    for a, b in zip(left, right, strict=True):
        same = items_equal(a, b)
        if same is False:
            return [False]
        if same is None:
            result = None
    return [] if result is None else [True]


def not_equal(left: list[Any], right: list[Any]) -> list[Any]:
    result = equal(left, right)
    return [not result[0]] if result else []


def _equivalent_items(a: Any, b: Any) -> bool:
    if a.__class__ is str and b.__class__ is str:
        return " ".join(a.lower().split()) == " ".join(b.lower().split())
    if is_number(a) and is_number(b):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if a.__class__ is dict and b.__class__ is dict:
        keys = (a.keys() | b.keys()) - {"id", "extension"}
        return all(k in a and k in b and _equivalent_items(a[k], b[k]) for k in keys)
    if a.__class__ is list and b.__class__ is list:
        return equivalent(a, b) == [True]
    return bool(items_equal(a, b))


def equivalent(left: list[Any], right: list[Any]) -> list[Any]:
    """``~``: order-independent, case- and whitespace-insensitive for strings."""
    if not left and not right:
        return [True]
    if len(left) != len(right):
        return [False]
    remaining = list(right)
    for a in left:
        for i, b in enumerate(remaining):
            if _equivalent_items(a, b):
                del remaining[i]
                break
        else:
            return [False]
    return [True]


def not_equivalent(left: list[Any], right: list[Any]) -> list[Any]:
    return [not equivalent(left, right)[0]]


def _parts(groups: tuple[str | None, ...]) -> tuple[float, ...]:
    """Numeric components up to the value's precision; seconds and milliseconds are one
    precision in FHIRPath, so the fraction joins the seconds."""
    *head, fraction = groups
    parts = [float(p) for p in head if p is not None]
    if fraction and parts:
        parts[-1] += float(fraction)
    return tuple(parts)


@lru_cache(maxsize=4096)
def _temporal_key(value: str) -> tuple[tuple[float, ...], datetime | None] | None:
    """Components of an ISO date/dateTime, and its instant when it has a time and a zone.

    Cached (the result is immutable): rules compare the same dates record after record."""
    m = DATETIME_RE.match(value)
    if not m:
        return None
    instant = None
    if m.group(8) and m.group(5):
        try:
            instant = datetime.fromisoformat(value)
        except ValueError:
            instant = None
    return _parts(m.groups()[:7]), instant


def _order(pa: tuple[float, ...], pb: tuple[float, ...]) -> int | None:
    common = min(len(pa), len(pb))
    if pa[:common] != pb[:common]:
        return (pa[:common] > pb[:common]) - (pa[:common] < pb[:common])
    return 0 if len(pa) == len(pb) else None


def _compare_strings(a: str, b: str) -> int | None:
    """-1/0/1, or None when two date/times of different precision cannot be ordered."""
    ka, kb = _temporal_key(a), _temporal_key(b)
    if ka is not None and kb is not None:
        if ka[1] is not None and kb[1] is not None:
            return (ka[1] > kb[1]) - (ka[1] < kb[1])
        return _order(ka[0], kb[0])
    ta, tb = TIME_RE.match(a), TIME_RE.match(b)
    if ta and tb:
        return _order(_parts(ta.groups()), _parts(tb.groups()))
    return (a > b) - (a < b)


def compare(op: str, left: list[Any], right: list[Any]) -> list[Any]:
    a = singleton(left, f"operator {op}")
    b = singleton(right, f"operator {op}")
    if a is None or b is None:
        return []
    if is_number(a) and is_number(b):
        order = (a > b) - (a < b)
    elif a.__class__ is str and b.__class__ is str:
        cmp = _compare_strings(a, b)
        if cmp is None:
            return []
        order = cmp
    else:
        raise FHIRPathEvaluationError(
            f"operator {op} cannot compare {type(a).__name__} with {type(b).__name__}"
        )
    if op == "<":
        return [order < 0]
    if op == "<=":
        return [order <= 0]
    if op == ">":
        return [order > 0]
    return [order >= 0]


def arithmetic(op: str, left: list[Any], right: list[Any]) -> list[Any]:
    a = singleton(left, f"operator {op}")
    b = singleton(right, f"operator {op}")
    if op == "&":
        if (a is not None and a.__class__ is not str) or (b is not None and b.__class__ is not str):
            raise FHIRPathEvaluationError("operator & needs strings")
        return [(a or "") + (b or "")]
    if a is None or b is None:
        return []
    if op == "+" and a.__class__ is str and b.__class__ is str:
        return [a + b]
    if not (is_number(a) and is_number(b)):
        raise FHIRPathEvaluationError(
            f"operator {op} is not supported on {type(a).__name__} and {type(b).__name__}"
        )
    if op == "+":
        return [a + b]
    if op == "-":
        return [a - b]
    if op == "*":
        return [a * b]
    if b == 0:
        return []  # FHIRPath: division by zero yields empty
    if op == "/":
        return [a / b]
    if op == "div":
        return [int(a / b)]  # truncates toward zero, as FHIRPath specifies
    return [math.fmod(a, b) if a.__class__ is float or b.__class__ is float else
            int(math.fmod(a, b))]


def negate(coll: list[Any]) -> list[Any]:
    value = singleton(coll, "unary -")
    if value is None:
        return []
    if not is_number(value):
        raise FHIRPathEvaluationError("unary - needs a number")
    return [-value]


def logic(op: str, left: list[Any], right: list[Any]) -> list[Any]:
    """Three-valued and/or/xor/implies (the caller short-circuits ``and``/``or``)."""
    a = singleton_bool(left, op)
    b = singleton_bool(right, op)
    if op == "and":
        if a is False or b is False:
            return [False]
        return [True] if a is True and b is True else []
    if op == "or":
        if a is True or b is True:
            return [True]
        return [False] if a is False and b is False else []
    if op == "xor":
        return [] if a is None or b is None else [a != b]
    # implies
    if a is False:
        return [True]
    if a is True:
        return [] if b is None else [b]
    return [True] if b is True else []


def distinct(coll: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in coll:
        for seen in out:
            if items_equal(item, seen):
                break
        else:
            out.append(item)
    return out


def union(left: list[Any], right: list[Any]) -> list[Any]:
    both = left + right
    return both if len(both) < 2 else distinct(both)


def membership(item_side: list[Any], collection: list[Any], op: str) -> list[Any]:
    """``x in coll`` / ``coll contains x``."""
    item = singleton(item_side, f"operator {op}")
    if item is None:
        return []
    return [any(items_equal(item, c) for c in collection)]
