"""``lowBoundary()`` / ``highBoundary()`` for decimals, dates, dateTimes and times.

A value's type comes from the compiler when it knows it (``ofType(dateTime)``, a
``performedDateTime`` key); otherwise from the value's shape: a number is a decimal, an ISO
string without a time part is a date, with one a dateTime, ``hh:mm[:ss]`` a time.
Decimal precision is taken from the float's shortest repr: JSON ``1.50`` reaches us as the
float 1.5, so trailing zeros in the source cannot be honoured.
"""

from __future__ import annotations

import calendar
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from mappings.fhirpath.fhir_types import DATE_RE, DATETIME_RE, TIME_RE

_MAX_DECIMAL_PRECISION = 8
_TEMPORAL = frozenset({"date", "dateTime", "instant", "time"})


def boundary(value: Any, type_name: str | None, precision: int | None, high: bool) -> Any:
    """The low/high boundary of one value, or None when it has none."""
    kind = type_name if type_name in _TEMPORAL or type_name in ("decimal", "integer") else None
    cls = value.__class__
    if cls is int or cls is float:
        return _decimal(value, precision, high)
    if cls is not str:
        return None
    if kind is None:
        if TIME_RE.match(value):
            kind = "time"
        elif DATE_RE.match(value):
            kind = "date"
        elif DATETIME_RE.match(value):
            kind = "dateTime"
        else:
            return None
    if kind == "time":
        return _time(value, high)
    if kind == "date":
        return _date(value, precision, high)
    return _datetime(value, high)


def _decimal(value: int | float, precision: int | None, high: bool) -> float | int | None:
    text = repr(value)
    if "e" in text or "E" in text:
        return None
    digits = len(text.split(".", 1)[1]) if "." in text else 0
    if precision is not None and not 0 <= precision <= 28:
        return None
    half = Decimal(5).scaleb(-(digits + 1))
    exact = Decimal(text) + half if high else Decimal(text) - half
    target = _MAX_DECIMAL_PRECISION if precision is None else precision
    if target < digits + 1:
        exact = exact.quantize(Decimal(1).scaleb(-target),
                               rounding=ROUND_CEILING if high else ROUND_FLOOR)
    if target == 0 and precision is not None:
        return int(exact)
    return float(exact)


def _date_parts(year: str, month: str | None, day: str | None, high: bool) -> str:
    y = int(year)
    m = int(month) if month else (12 if high else 1)
    last_day = calendar.monthrange(y, m)[1]
    d = int(day) if day else (last_day if high else 1)
    return f"{y:04d}-{m:02d}-{d:02d}"


def _date(value: str, precision: int | None, high: bool) -> str | None:
    m = DATE_RE.match(value)
    if not m:
        return None
    full = _date_parts(m.group(1), m.group(2), m.group(3), high)
    if precision == 4:
        return full[:4]
    if precision == 6:
        return full[:7]
    return full


def _datetime(value: str, high: bool) -> str | None:
    m = DATETIME_RE.match(value)
    if not m:
        return None
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    date = _date_parts(year, month, day, high)
    time = _clock(hour, minute, second, fraction, high)
    if zone is None:
        zone = "-12:00" if high else "+14:00"  # the widest offsets anyone uses
    return f"{date}T{time}{zone}"


def _time(value: str, high: bool) -> str | None:
    m = TIME_RE.match(value)
    if not m:
        return None
    return _clock(m.group(1), m.group(2), m.group(3), m.group(4), high)


def _clock(hour: str | None, minute: str | None, second: str | None, fraction: str | None,
           high: bool) -> str:
    fill = "59" if high else "00"
    hh = hour if hour is not None else ("23" if high else "00")
    mm = minute if minute is not None else fill
    ss = second if second is not None else fill
    digits = fraction[1:] if fraction else ""
    ms = (digits + ("9" if high else "0") * 3)[:3] if len(digits) < 3 else digits
    return f"{hh}:{mm}:{ss}.{ms}"
