"""Named value conversions a mapping file can ask for (``convert: local_date``).

These are the small pieces of code behind the declarative mappings: turning FHIR dateTimes into
dates in the site's time zone, references into ids, MRNs into pseudonyms. Each raises
``ConversionError`` with a reason that never quotes the value (it may be PHI); the engine adds
the field name.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from mappings.codemaps import display_icd10cm


class ConversionError(ValueError):
    """A value cannot be converted; ``code`` is the stable error code."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class SiteContext:
    """What conversions need to know about the site."""

    site_id: str
    tz: ZoneInfo
    pseudonym_key: bytes
    # The PROM instrument registry (mappings.proms), for the prom_score hook.
    instruments: Any = None


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_PARTIAL = re.compile(r"^\d{4}(-\d{2})?$")
# The shape of a FHIR dateTime with a time. Python's fromisoformat also takes forms FHIR does
# not (``20240315``, a space for ``T``, week dates), which would turn a v2-style or garbled
# value into a wrong date instead of an error. Missing seconds or offset are tolerated:
# hospitals send them, and no offset means site-local time.
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?$")


def parse_fhir_datetime(value: Any, tz: ZoneInfo) -> datetime:
    """A FHIR date/dateTime/instant string as an aware datetime; no offset means site-local time."""
    if not isinstance(value, str):
        raise ConversionError("value.invalid_datetime", "is not a FHIR dateTime string")
    text = value.strip()
    if _DATE.match(text):
        try:
            day = date.fromisoformat(text)
        except ValueError:  # 2024-02-30
            raise ConversionError("value.invalid_date", "is not a valid calendar date") from None
        return datetime.combine(day, time(0), tz)
    if _PARTIAL.match(text):
        raise ConversionError("value.partial_date", "has only year or year-month precision")
    try:
        if not _DATETIME.match(text):
            raise ValueError
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConversionError("value.invalid_datetime", "is not a valid FHIR dateTime") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)


def local_date(value: Any, ctx: SiteContext) -> date:
    """The calendar date at the site: an operation at 23:30 local is on that local day."""
    if isinstance(value, datetime):
        return value.astimezone(ctx.tz).date() if value.tzinfo else value.date()
    if isinstance(value, date):
        return value
    return parse_fhir_datetime(value, ctx.tz).astimezone(ctx.tz).date()


def aware_datetime(value: Any, ctx: SiteContext) -> datetime:
    return parse_fhir_datetime(value, ctx.tz)


def reference_id(value: Any, _ctx: SiteContext) -> str:
    """``Patient/123`` (or a full URL, or a versioned reference) → ``123``."""
    if value.__class__ is str and value[-1:].isalnum() and value[:1].isalnum() and "/_history/" not in value:
        return value.rsplit("/", 1)[-1]  # the common, clean case: no trimming needed
    # Anything but a string (e.g. a Reference with only a display name) identifies nothing.
    text = value.strip() if isinstance(value, str) else ""
    if "/_history/" in text:
        text = text.split("/_history/", 1)[0]
    ident = text.rstrip("/").rsplit("/", 1)[-1]
    if not ident:
        raise ConversionError("value.invalid_reference", "is not a resource reference")
    return ident


def pseudonym(value: Any, ctx: SiteContext) -> str:
    """Keyed HMAC of site id + MRN: stable per site, meaningless without the site's key."""
    message = f"{ctx.site_id}\x1f{str(value).strip()}".encode()
    return hmac.new(ctx.pseudonym_key, message, hashlib.sha256).hexdigest()[:32]


def icd10cm(value: Any, _ctx: SiteContext) -> str:
    return display_icd10cm(str(value))


def boolean(value: Any, _ctx: SiteContext) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "y", "yes"):
        return True
    if text in ("false", "0", "n", "no"):
        return False
    raise ConversionError("value.invalid_boolean", "is not true or false")


def lower(value: Any, _ctx: SiteContext) -> str:
    return str(value).strip().lower()


def coding_token(value: Any, _ctx: SiteContext) -> str:
    """A Coding as ``system|code``, the compact form used for code lists in the store."""
    if not isinstance(value, dict) or not value.get("code"):
        raise ConversionError("value.invalid_coding", "is not a Coding with a code")
    return f"{value.get('system', '')}|{str(value['code']).strip()}"


CONVERTERS: dict[str, Callable[[Any, SiteContext], Any]] = {
    "local_date": local_date,
    "datetime": aware_datetime,
    "reference_id": reference_id,
    "pseudonym": pseudonym,
    "icd10cm": icd10cm,
    "boolean": boolean,
    "lower": lower,
    "coding_token": coding_token,
}
