"""HL7 v2 datatypes → FHIR R4 datatypes (the ``as:`` names used in mappings/hl7v2/resources.yaml).

Each converter takes one field repetition (components → subcomponents, already unescaped)
and returns a FHIR JSON value, or None when there is nothing to map. A value that is present
but wrong raises ``BadValue``; the converter turns it into an issue naming the field. Messages
never include the value itself (PHI).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Protocol
from urllib.parse import quote
from zoneinfo import ZoneInfo

Repetition = list[list[str]]
JSON = dict[str, Any]

V2_TABLE_URI = "http://terminology.hl7.org/CodeSystem/v2-{:04d}"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


class BadValue(ValueError):
    """A valued field that cannot be converted. ``code`` is the issue code."""

    def __init__(self, code: str, message: str, severity: str = "error") -> None:
        super().__init__(message)
        self.code = code
        self.severity = severity


@dataclass(frozen=True, slots=True)
class Choice:
    """A value for a FHIR choice element: ``path`` + ``suffix`` (performed → performedPeriod)."""

    suffix: str
    value: Any


class Context(Protocol):
    """What converters need from the conversion in progress."""

    tz: ZoneInfo

    def table(self, name: str) -> dict[str, Any]: ...

    def warn(self, code: str, message: str) -> None: ...

    def add_resource(self, resource: JSON) -> None: ...

    def default_authority(self) -> str: ...


def comp(rep: Repetition, i: int, j: int = 1) -> str:
    """Component i, subcomponent j (1-based) of a repetition, '' when absent."""
    if i <= len(rep):
        subs = rep[i - 1]
        if j <= len(subs):
            return subs[j - 1].strip()
    return ""


def short_hash(*parts: str) -> str:
    """Deterministic FHIR id from key parts (24 hex chars = 96 bits)."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:24]


# --- dates -------------------------------------------------------------------------------

_DTM = re.compile(
    r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,4}))?)?)?)?)?)?"
    r"([+-]\d{4})?$"
)


def _dtm_parts(value: str) -> tuple[list[str | None], str | None]:
    m = _DTM.match(value)
    if not m:
        raise BadValue("hl7.bad_date", "is not an HL7 date/time (YYYY[MM[DD[HH[MM[SS]]]]][+/-ZZZZ])")
    groups = list(m.groups())
    return groups[:7], groups[7]


def hl7_date(value: str) -> str | None:
    """HL7 DT/DTM → FHIR date (precision kept: YYYY, YYYY-MM, YYYY-MM-DD)."""
    if not value:
        return None
    (y, mo, d, *_), _off = _dtm_parts(value)
    try:
        date(int(y or 0), int(mo or 1), int(d or 1))
    except ValueError as exc:
        raise BadValue("hl7.bad_date", f"is not a calendar date ({_reason(exc)})") from exc
    return "-".join(p for p in (y, mo, d) if p)


def hl7_datetime(value: str, tz: ZoneInfo) -> str | None:
    """HL7 DTM → FHIR dateTime. A time without offset is local to the site (``tz``)."""
    if not value:
        return None
    (y, mo, d, h, mi, s, frac), off = _dtm_parts(value)
    if h is None:
        if off is not None and d is None:
            raise BadValue("hl7.bad_date", "has an offset without a time")
        return hl7_date(value[:8] if off else value)
    try:
        tzinfo: Any = tz
        if off:
            sign = -1 if off[0] == "-" else 1
            tzinfo = timezone(sign * timedelta(hours=int(off[1:3]), minutes=int(off[3:5])))
        dt = datetime(
            int(y or 0), int(mo or 1), int(d or 1), int(h), int(mi or 0), int(s or 0),
            int((frac or "0").ljust(6, "0")[:6]), tzinfo=tzinfo,
        )
    except ValueError as exc:
        raise BadValue("hl7.bad_date", f"is not a valid date/time ({_reason(exc)})") from exc
    return dt.isoformat(timespec="milliseconds" if frac else "seconds")


def _reason(exc: ValueError) -> str:
    """datetime's messages ('month must be in 1..12') name the part, not the value."""
    text = str(exc)
    return text if len(text) < 60 and not any(c.isdigit() for c in text.split(" ")[0]) else "invalid"


# --- codes -------------------------------------------------------------------------------


def code_system(name: str, ctx: Context, default: str | None = None) -> str | None:
    """Table 0396 name (CWE.3) → FHIR system URI (mappings/hl7v2/code_systems.yaml)."""
    key = name.strip().upper()
    if not key:
        return default
    uri = ctx.table("coding_systems").get(key)
    if uri:
        return str(uri)
    m = re.fullmatch(r"HL7?(\d{4})", key)
    if m:
        return V2_TABLE_URI.format(int(m.group(1)))
    if key.startswith(("HTTP://", "HTTPS://", "URN:")):
        return name.strip()
    ctx.warn("hl7.unknown_code_system", f"coding system {printable(key)} is not in code_systems.yaml")
    return "urn:hl7v2:codesystem:" + quote(name.strip(), safe="")


def printable(value: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "?" for c in value[:30])


def _coding(code: str, display: str, system_name: str, ctx: Context, default: str | None) -> JSON:
    coding: JSON = {}
    system = code_system(system_name, ctx, default)
    if system:
        coding["system"] = system
    coding["code"] = code
    if display:
        coding["display"] = display
    return coding


def codeable_concept(rep: Repetition, ctx: Context, rule: JSON) -> JSON | None:
    """CE/CWE/CNE (and IS/ID values) → CodeableConcept; alternate code (4-6) kept too."""
    default = rule.get("system")
    codings = []
    if comp(rep, 1):
        codings.append(_coding(comp(rep, 1), comp(rep, 2), comp(rep, 3), ctx, default))
    if comp(rep, 4):
        codings.append(_coding(comp(rep, 4), comp(rep, 5), comp(rep, 6), ctx, None))
    text = comp(rep, 9) or (comp(rep, 2) if not comp(rep, 1) else "")
    cc: JSON = {}
    if codings:
        cc["coding"] = codings
    if text:
        cc["text"] = text
    return cc or None


def coding_from_table(rep: Repetition, ctx: Context, rule: JSON) -> JSON | None:
    """A table value (e.g. PV1-2) → Coding via a code table; unknown codes keep the v2 code."""
    code = comp(rep, 1)
    if not code:
        return None
    entry = ctx.table(rule["table"]).get(code.upper())
    if isinstance(entry, dict):
        return {"system": rule["system"], **entry}
    ctx.warn("hl7.unknown_code", f"value not in table {rule['table']}; kept as a v2 code")
    return {"system": V2_TABLE_URI.format(4), "code": code}


def code(rep: Repetition, ctx: Context, rule: JSON) -> Any:
    value = comp(rep, 1)
    if not value:
        return None
    table = rule.get("table")
    if table is None:
        return value
    mapped = ctx.table(table).get(value.upper())
    if mapped is None:
        # The value itself is not quoted: it may be patient data (PID-8 sex, PID-30).
        raise BadValue("hl7.unknown_code", f"value not in table {table}", "warning")
    return mapped


# --- identifiers, names, people ----------------------------------------------------------

_OID = re.compile(r"^[0-2](\.(0|[1-9]\d*))+$")


def authority_system(namespace: str, universal: str, kind: str, ctx: Context) -> str | None:
    """Assigning authority (HD) → identifier system; see identifier_systems in code_systems.yaml."""
    systems = ctx.table("identifier_systems")
    for key in (namespace, universal):
        if key and key.upper() in systems:
            return str(systems[key.upper()])
    if universal and (kind.upper() == "ISO" or _OID.match(universal)):
        return "urn:oid:" + universal
    if namespace and _OID.match(namespace):
        return "urn:oid:" + namespace
    if namespace:
        return "urn:hl7v2:authority:" + quote(namespace, safe="")
    return None


def identifier(rep: Repetition, ctx: Context, rule: JSON) -> JSON | None:
    """CX (default) or EI (``datatype: EI``) → Identifier with system and type."""
    value = comp(rep, 1)
    if not value:
        return None
    ident: JSON = {"value": value}
    if rule.get("datatype") == "EI":
        system = authority_system(comp(rep, 2), comp(rep, 3), comp(rep, 4), ctx)
        type_code = rule.get("type", "")
    else:
        system = authority_system(comp(rep, 4, 1), comp(rep, 4, 2), comp(rep, 4, 3), ctx)
        type_code = comp(rep, 5) or rule.get("type", "")
    if system:
        ident["system"] = system
    fixed = rule.get("fixed_type")
    if fixed:
        # The segment says what the identifier is (PV1-19 is a visit number, whatever CX-5
        # claims): V2-to-FHIR IG PV1[Encounter] map, PV1-19 -> identifier.type "VN".
        ident["type"] = {"coding": [{"system": V2_0203, "code": fixed["code"]}], "text": fixed["text"]}
    elif type_code:
        ident["type"] = {"coding": [{"system": V2_0203, "code": type_code}]}
    return ident


def human_name(rep: Repetition, ctx: Context, rule: JSON) -> JSON | None:
    """XPN → HumanName. Component 1 is FN in 2.4+ (surname in subcomponent 1), ST before."""
    name: JSON = {}
    use = ctx.table("name_use").get(comp(rep, 7).upper())
    if use:
        name["use"] = use
    if comp(rep, 1):
        name["family"] = comp(rep, 1)
    given = [g for g in (comp(rep, 2), comp(rep, 3)) if g]
    if given:
        name["given"] = given
    if comp(rep, 5):
        name["prefix"] = [comp(rep, 5)]
    suffix = [s for s in (comp(rep, 4), comp(rep, 6)) if s]
    if suffix:
        name["suffix"] = suffix
    return name if set(name) - {"use"} else None


def address(rep: Repetition, ctx: Context, rule: JSON) -> JSON | None:
    """XAD -> Address (V2-to-FHIR IG XAD[Address]: street and other designation are lines,
    XAD-7 gives use and type through tables 0190)."""
    out: JSON = {}
    lines = [line for line in (comp(rep, 1, 1), comp(rep, 2)) if line]
    if lines:
        out["line"] = lines
    for i, key in ((3, "city"), (9, "district"), (4, "state"), (5, "postalCode"), (6, "country")):
        if comp(rep, i):
            out[key] = comp(rep, i)
    if not out:
        return None
    kind = comp(rep, 7).upper()
    for table, key in (("address_use", "use"), ("address_type", "type")):
        mapped = ctx.table(table).get(kind)
        if mapped:
            out[key] = mapped
    return out


def contact_point(rep: Repetition, ctx: Context, rule: JSON) -> JSON | None:
    """XTN -> ContactPoint, after the V2-to-FHIR IG XTN[ContactPoint] map: e-mail (XTN-3
    Internet/X.400, or no XTN-3 but an XTN-4) from XTN-4; a number from XTN-12, else XTN-5..8
    composed, else XTN-1. ``use`` (rule) applies when XTN-2 is not valued (PID-13 home,
    PID-14 work)."""
    equipment = comp(rep, 3).upper()
    system = ctx.table("contact_point_system").get(equipment)
    if not equipment and comp(rep, 4):
        system = "email"
    if system == "email":
        value = comp(rep, 4)
    else:
        parts = [p for p in (comp(rep, 5) and "+" + comp(rep, 5), comp(rep, 6), comp(rep, 7)) if p]
        composed = " ".join(parts) if comp(rep, 7) else ""
        if composed and comp(rep, 8):
            composed += " X" + comp(rep, 8)
        value = comp(rep, 12) or composed or comp(rep, 1)
    if not value:
        return None
    out: JSON = {}
    if system:
        out["system"] = system
    out["value"] = value
    use = ctx.table("contact_point_use").get(comp(rep, 2).upper())
    if use is None and not comp(rep, 2):
        use = "mobile" if equipment == "CP" else rule.get("use")
    if use:
        out["use"] = use
    return out


def _practitioner(rep: Repetition, ctx: Context) -> str | None:
    """XCN → a Practitioner resource (added to the result); returns its reference."""
    ident = comp(rep, 1)
    family = comp(rep, 2)
    given = [g for g in (comp(rep, 3), comp(rep, 4)) if g]
    if not ident and not family:
        return None
    authority = comp(rep, 9, 1) or comp(rep, 9, 2) or ctx.default_authority()
    pid = short_hash("Practitioner", authority, ident) if ident else short_hash(
        "Practitioner", authority, family, *given
    )
    res: JSON = {"resourceType": "Practitioner", "id": pid}
    if ident:
        ident_json: JSON = {"value": ident}
        system = authority_system(comp(rep, 9, 1), comp(rep, 9, 2), comp(rep, 9, 3), ctx)
        if system:
            ident_json["system"] = system
        res["identifier"] = [ident_json]
    if family or given:
        name: JSON = {}
        if family:
            name["family"] = family
        if given:
            name["given"] = given
        if comp(rep, 6):
            name["prefix"] = [comp(rep, 6)]
        res["name"] = [name]
    ctx.add_resource(res)
    return f"Practitioner/{pid}"


def practitioner(rep: Repetition, ctx: Context, rule: JSON) -> JSON | None:
    ref = _practitioner(rep, ctx)
    return {"reference": ref} if ref else None


def performer(rep: Repetition, ctx: Context, rule: JSON) -> JSON | None:
    """XCN → Procedure.performer {function, actor} (function from the mapping rule)."""
    ref = _practitioner(rep, ctx)
    if ref is None:
        return None
    out: JSON = {}
    if rule.get("function"):
        fn = dict(rule["function"])
        out["function"] = {"coding": [fn], "text": fn.get("display", "")}
    out["actor"] = {"reference": ref}
    return out


def participant(rep: Repetition, ctx: Context, rule: JSON) -> JSON | None:
    ref = _practitioner(rep, ctx)
    if ref is None:
        return None
    out: JSON = {"individual": {"reference": ref}}
    if rule.get("type"):
        out["type"] = [{"coding": [dict(rule["type"])]}]
    return out


# --- dates as converters -----------------------------------------------------------------


def date_(rep: Repetition, ctx: Context, rule: JSON) -> str | None:
    return hl7_date(comp(rep, 1))


def datetime_(rep: Repetition, ctx: Context, rule: JSON) -> str | None:
    return hl7_datetime(comp(rep, 1), ctx.tz)


def _number(value: str) -> int | float:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError as exc:
        raise BadValue("hl7.bad_number", "is not a number") from exc
    if number != number or number in (float("inf"), float("-inf")):
        raise BadValue("hl7.bad_number", "is not a finite number")
    return number


def performed(rep: Repetition, ctx: Context, rule: JSON, minutes: str = "") -> Choice | None:
    """PR1-5 (+ PR1-7 minutes) → performedDateTime, or performedPeriod when minutes given."""
    start = hl7_datetime(comp(rep, 1), ctx.tz)
    if start is None:
        return None
    if not minutes:
        return Choice("DateTime", start)
    mins = _number(minutes)
    if "T" not in start:
        ctx.warn("hl7.minutes_without_time", "PR1-7 minutes given but PR1-5 has no time")
        return Choice("DateTime", start)
    end = datetime.fromisoformat(start) + timedelta(minutes=float(mins))
    return Choice("Period", {"start": start, "end": end.isoformat(timespec="seconds")})


# --- OBX values --------------------------------------------------------------------------


def obx_value(
    reps: Sequence[Repetition], value_type: str, units: Repetition, ctx: Context
) -> Choice | None:
    """OBX-5 by OBX-2 → value[x]. Several repetitions of OBX-5: the first is used (warned)."""
    if not reps:
        return None
    if len(reps) > 1:
        ctx.warn("hl7.obx_repeated_value", f"OBX-5 has {len(reps)} repetitions; the first is used")
    rep = reps[0]
    vt = value_type.upper()
    if vt in ("NM", "SN"):
        if vt == "SN":
            comparator, number = comp(rep, 1), comp(rep, 2)
        else:
            comparator, number = "", comp(rep, 1)
        if not number:
            return None
        qty: JSON = {"value": _number(number)}
        if comparator in ("<", "<=", ">=", ">"):
            qty["comparator"] = comparator
        unit_code, unit_text, unit_system = comp(units, 1), comp(units, 2), comp(units, 3)
        if unit_code or unit_text:
            qty["unit"] = unit_text or unit_code
        if unit_code:
            system = code_system(unit_system, ctx) if unit_system else None
            if system:
                qty["system"] = system
            qty["code"] = unit_code
        return Choice("Quantity", qty)
    if vt in ("CE", "CWE", "CNE", "CF"):
        cc = codeable_concept(rep, ctx, {})
        return Choice("CodeableConcept", cc) if cc else None
    if vt in ("DT", "TS", "DTM"):
        value = hl7_datetime(comp(rep, 1), ctx.tz)
        return Choice("DateTime", value) if value else None
    text = "^".join("&".join(subs) for subs in rep).rstrip("^&")
    if vt not in ("ST", "TX", "FT", "ID", "IS", ""):
        ctx.warn("hl7.obx_value_type", f"OBX-2 value type {printable(vt)} mapped as a string")
    return Choice("String", text) if text else None


Converter = Callable[[Repetition, Context, JSON], Any]

CONVERTERS: dict[str, Converter] = {
    "CodeableConcept": codeable_concept,
    "Coding": coding_from_table,
    "code": code,
    "Identifier": identifier,
    "HumanName": human_name,
    "Address": address,
    "ContactPoint": contact_point,
    "practitioner": practitioner,
    "performer": performer,
    "participant": participant,
    "date": date_,
    "dateTime": datetime_,
}
