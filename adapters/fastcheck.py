"""A compiled, conservative pre-check: is this resource certainly valid FHIR R4 (R4B models)?

fhir.resources builds a pydantic model per element (about 400 µs a resource on this mix, more
than mapping and writing together). Most records a hospital sends are clean, and for a clean
record validation only has to say so. ``certainly_clean`` walks the JSON once against a table
compiled from the same fhir.resources models (element names, cardinality, choice groups,
required elements, primitive types) and answers True only when every element is one it
understands and passes its check. Anything it does not understand (contained resources,
primitive extensions ``_x``, rarer primitive types, nulls, empty arrays or objects, enum values
outside the model's list, a time without an offset, ...) answers False, and the caller runs the
full model validation, which then words the precise issue. So a True here always agrees with
fhir.resources saying nothing (``tests/adapters/test_fastcheck.py`` checks that on the sample
feed and on mutated records); a False only costs the slow path.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cache
from typing import Any

# Bumped whenever what counts as clean changes: cached verdicts of another version are not used.
VERSION = 1

# ---- primitives (checks at least as strict as fhir_core's types) ----------------------------

_CODE = re.compile(r"[^\s]+(\s[^\s]+)*")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_URI = re.compile(r"\S+")
_DATE = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?"
)
# A dateTime with a time is accepted here only with an offset and seconds below 60 (a leap
# second or a naive time goes to the full check, which words the warning).
_DATETIME = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"(T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?(Z|[+\-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?"
)
_INSTANT = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?(Z|[+\-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
)


def _string(v: Any) -> bool:
    # Non-empty with something besides whitespace; surrounding whitespace goes to the full check.
    return isinstance(v, str) and bool(v) and not v[0].isspace() and not v[-1].isspace()


def _code(v: Any) -> bool:
    return isinstance(v, str) and _CODE.fullmatch(v) is not None


def _id(v: Any) -> bool:
    return isinstance(v, str) and _ID.fullmatch(v) is not None


def _uri(v: Any) -> bool:
    return isinstance(v, str) and _URI.fullmatch(v) is not None


def _full_date(v: str) -> bool:
    try:
        date.fromisoformat(v[:10])
    except ValueError:
        return False
    return True


def _date(v: Any) -> bool:
    return isinstance(v, str) and _DATE.fullmatch(v) is not None and (len(v) < 10 or _full_date(v))


def _datetime(v: Any) -> bool:
    if not isinstance(v, str) or _DATETIME.fullmatch(v) is None:
        return False
    if len(v) <= 10:
        return len(v) < 10 or _full_date(v)
    try:
        datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _instant(v: Any) -> bool:
    return isinstance(v, str) and _INSTANT.fullmatch(v) is not None and _datetime(v)


def _boolean(v: Any) -> bool:
    return isinstance(v, bool)


def _integer(v: Any) -> bool:
    return type(v) is int and -(2**31) <= v < 2**31


def _unsigned(v: Any) -> bool:
    return type(v) is int and 0 <= v < 2**31


def _positive(v: Any) -> bool:
    return type(v) is int and 0 < v < 2**31


def _decimal(v: Any) -> bool:
    return (type(v) is int and abs(v) < 2**53) or (type(v) is float and v == v and abs(v) < 1e300)


# fhir_core type name -> check. Types not listed (markdown, url, uuid, oid, base64Binary,
# time, xhtml, integer64, ...) always take the full check.
_PRIMITIVES: dict[str, typing.Callable[[Any], bool]] = {
    "String": _string,
    "Code": _code,
    "Id": _id,
    "Uri": _uri,
    "Canonical": _uri,
    "Date": _date,
    "DateTime": _datetime,
    "Instant": _instant,
    "Boolean": _boolean,
    "Integer": _integer,
    "UnsignedInt": _unsigned,
    "PositiveInt": _positive,
    "Decimal": _decimal,
}

# ---- the compiled table ------------------------------------------------------------------------


# Checks whose verdict on a string is remembered: codes, systems and timestamps repeat on every
# record, and their regular expressions (and date parsing) cost more than a dict lookup. Ids,
# free strings and numbers are mostly distinct or already cheap, so they are not remembered.
_REMEMBERED_CHECKS = frozenset({_code, _uri, _date, _datetime, _instant})
_MEMO_SIZE = 8192  # verdicts kept per check; a feed of ever-new values empties it, never grows it


@dataclass(slots=True)
class _Field:
    is_list: bool
    primitive: typing.Callable[[Any], bool] | None = None  # None: a complex type (``model``)
    model: str | None = None  # dotted import path of the element's model class
    enum: frozenset[str] | None = None
    one_of: str | None = None
    # The compiled ``model``, resolved on first use (models refer to each other in cycles).
    sub: _Model | None = None
    # String -> verdict of ``primitive``, shared by every field with the same check.
    memo: dict[str, bool] | None = None


@dataclass(slots=True)
class _Model:
    resource_type: str | None
    fields: dict[str, _Field] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    choice_required: dict[str, tuple[str, ...]] = field(default_factory=dict)


_UNSUPPORTED = _Field(is_list=False)  # marker: the element is known but not checked here


def _unwrap(annotation: Any) -> tuple[bool, Any]:
    """(is a list, the item type) with Optional/None stripped."""
    is_list = False
    tp = annotation
    for _ in range(4):
        origin = typing.get_origin(tp)
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return is_list, None
            tp = args[0]
        elif origin in (list, typing.List):  # noqa: UP006 - fhir.resources writes typing.List
            is_list = True
            tp = typing.get_args(tp)[0]
        else:
            break
    return is_list, tp


def _compile_field(info: Any) -> _Field:
    is_list, tp = _unwrap(info.annotation)
    extra = info.json_schema_extra or {}
    enum = extra.get("enum_values")
    one_of = extra.get("one_of_many")
    if typing.get_origin(tp) is typing.Annotated:
        meta = typing.get_args(tp)[1:]
        name = type(meta[0]).__name__ if meta else ""
        if meta and isinstance(meta[0], type):
            name = meta[0].__name__
        check = _PRIMITIVES.get(name)
        if check is None:
            return _UNSUPPORTED
        memo = _memo_for(check) if check in _REMEMBERED_CHECKS else None
        return _Field(
            is_list, primitive=check, enum=frozenset(enum) if enum else None, one_of=one_of, memo=memo
        )
    klass = getattr(tp, "_model_klass", None)
    if isinstance(klass, str) and not klass.endswith(".resource.Resource"):
        # Contained resources (abstract Resource) go to the full check.
        if klass.split(".")[-1] in ("Resource", "DomainResource"):
            return _UNSUPPORTED
        return _Field(is_list, model=klass, one_of=one_of)
    return _UNSUPPORTED


@cache
def _memo_for(check: typing.Callable[[Any], bool]) -> dict[str, bool]:
    return {}


@cache
def _compiled(model_path: str) -> _Model:
    from pydantic.fields import FieldInfo  # noqa: F401 - documents what model_fields holds

    module, _, name = model_path.rpartition(".")
    klass = getattr(__import__(module, fromlist=[name]), name)
    compiled = _Model(resource_type=None)
    required: list[str] = []
    choices: dict[str, list[str]] = {}
    for fname, info in klass.model_fields.items():
        alias = info.alias or fname
        if fname.endswith("__ext") or fname == "fhir_comments":
            continue  # present in the JSON only as ``_x``: the walker refuses those
        extra = info.json_schema_extra or {}
        compiled.fields[alias] = _compile_field(info)
        if info.is_required() or extra.get("element_required"):
            required.append(alias)
        if extra.get("one_of_many") and extra.get("one_of_many_required"):
            choices.setdefault(str(extra["one_of_many"]), []).append(alias)
    compiled.required = tuple(required)
    compiled.choice_required = {k: tuple(v) for k, v in choices.items()}
    return compiled


@cache
def _resource_model(resource_type: str) -> _Model | None:
    try:
        from fhir.resources.R4B import get_fhir_model_class

        klass = get_fhir_model_class(resource_type)
    except (KeyError, ValueError, AttributeError, ImportError):
        return None
    compiled = _compiled(f"{klass.__module__}.{klass.__name__}")
    compiled.resource_type = resource_type
    return compiled


# ---- the walk ---------------------------------------------------------------------------------


def _element_ok(model: _Model, data: Any, top: bool) -> bool:
    if not isinstance(data, dict) or not data:
        return False
    fields = model.fields
    chosen: set[str] | None = None
    items: list[Any] | tuple[Any]
    for key, value in data.items():
        if top and key == "resourceType":
            continue
        spec = fields.get(key)
        if spec is None or spec is _UNSUPPORTED:
            return False
        if spec.one_of is not None:
            if chosen is None:
                chosen = {spec.one_of}
            elif spec.one_of in chosen:
                return False
            else:
                chosen.add(spec.one_of)
        if spec.is_list:
            if not isinstance(value, list) or not value:
                return False
            items = value
        elif isinstance(value, list):
            return False
        else:
            items = (value,)
        check = spec.primitive
        if check is not None:
            memo, enum = spec.memo, spec.enum
            for item in items:
                if memo is not None and item.__class__ is str:
                    ok = memo.get(item)
                    if ok is None:
                        ok = check(item)
                        if len(memo) >= _MEMO_SIZE:
                            memo.clear()
                        memo[item] = ok
                else:
                    ok = check(item)
                if not ok or (enum is not None and item not in enum):
                    return False
        else:
            sub = spec.sub
            if sub is None:
                assert spec.model is not None
                sub = spec.sub = _compiled(spec.model)
            for item in items:
                if not _element_ok(sub, item, False):
                    return False
    for name in model.required:
        if name not in data:
            return False
    if model.choice_required:
        return chosen is not None and chosen.issuperset(model.choice_required)
    return True


def certainly_clean(resource: dict[str, Any]) -> bool:
    """True only when full validation (``adapters.validation.validate``) would find nothing."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return False
    model = _resource_model(rtype)
    if model is None:
        return False
    try:
        return _element_ok(model, resource, True)
    except RecursionError:
        return False
