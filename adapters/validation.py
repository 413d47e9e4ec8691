"""Structural validation of incoming resources against FHIR R4 models.

fhir.resources' top-level package is R5, which silently mis-reads R4 Procedures
(``performedDateTime``, ``reasonReference``); R4B shares R4's shape for the resources we take
in, so R4 data is checked against ``fhir.resources.R4B``. Validation costs ~270 µs a
resource (shared/reference/libraries.md 3.2) and rejects things real feeds send, so it is a
configurable check beside the mapping, never a gate that stops a batch:

- ``strict``: a resource with errors is staged but not mapped (``invalid``);
- ``warn``: errors are recorded against the element, and what is intact is mapped;
- ``off``: no model validation (the mapping's own rules still apply).

Problems are told in plain words naming the element ("Procedure.code.text is an empty string;
FHIR does not allow empty strings"), never with the model's regular expressions. A problem of a
record that still mapped is a warning; a time without an offset is always one (it is read as
site-local). A primitive of the wrong JSON type is left out of what the mapping sees, so it is a
named validation error, never a crash inside the mapping.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from functools import cache
from typing import Any, Literal

from pydantic import ValidationError

from adapters.fastcheck import VERSION as FASTCHECK_VERSION
from adapters.fastcheck import certainly_clean
from registry_types.issues import Issue

Strictness = Literal["strict", "warn", "off"]
MAX_ISSUES = 10


@cache
def _model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource_type)


def _path(resource_type: str, loc: tuple[Any, ...], *, indexes: bool = True) -> str:
    out = resource_type
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]" if indexes else ""
        elif not str(part).startswith("function-"):
            out += f".{part}"
    return out


# A FHIR dateTime with a time but no offset ("2025-03-14T08:30:00"): R4 requires the offset,
# but hospitals send them, and the mapping reads them as site-local time.
_NAIVE_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?")
_JSON_KINDS: tuple[tuple[type, str], ...] = (
    (bool, "true/false"),
    (int, "a number"),
    (float, "a number"),
    (str, "a string"),
    (list, "an array"),
    (dict, "an object"),
)
_EXPECTED = {
    "string_type": "a JSON string",
    "int_type": "a JSON integer",
    "int_parsing": "a JSON integer",
    "int_from_float": "a JSON integer",
    "float_type": "a JSON number",
    "float_parsing": "a JSON number",
    "decimal_type": "a JSON number",
    "decimal_parsing": "a JSON number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a JSON array",
    "dict_type": "a JSON object",
    "model_type": "a JSON object",
    "model_attributes_type": "a JSON object",
}


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    return next((name for kind, name in _JSON_KINDS if isinstance(value, kind)), "another kind of value")


def _plain(field: str, err: Mapping[str, Any]) -> tuple[str, str, str]:
    """(code, severity, message) in plain words; never the offending value, never a regex."""
    kind = str(err["type"])
    value = err.get("input")
    if kind in _EXPECTED:
        return (
            "validation.wrong_type",
            "error",
            f"{field} should be {_EXPECTED[kind]}, but {_json_kind(value)} was sent",
        )
    if isinstance(value, str) and kind in ("string_pattern_mismatch", "string_too_short", "value_error"):
        if not value.strip():
            return (
                "validation.invalid_element",
                "error",
                f"{field} is an empty string; FHIR does not allow empty strings",
            )
        if _NAIVE_DATETIME.fullmatch(value.strip()):
            return (
                "validation.time_without_offset",
                "warning",
                f"{field} has a time without a UTC offset; it was read as site-local time",
            )
        return (
            "validation.invalid_element",
            "error",
            f"{field} is not in the form FHIR R4 requires for this element "
            "(e.g. a code with spaces, a badly written date or id)",
        )
    if kind == "extra_forbidden":
        return ("validation.invalid_element", "error", f"{field} is not an element of FHIR R4")
    if kind == "missing":
        return ("validation.invalid_element", "error", f"{field} is required by FHIR R4 but missing")
    # Anything else: pydantic's own words, unless they quote a pattern.
    msg = str(err["msg"])
    if "regex" in msg.lower() or "pattern" in msg.lower():
        msg = "not in the form FHIR R4 requires for this element"
    return ("validation.invalid_element", "error", f"{field}: {msg}")


def validate(resource: dict[str, Any]) -> list[Issue]:
    """Problems with ``resource`` as FHIR R4, in plain words naming the element, never its value.

    Severity is ``error`` unless the record can still be read as sent (a time without an
    offset: ``warning``). The pipeline turns them into warnings when the record still maps.
    """
    rtype = str(resource.get("resourceType", ""))
    try:
        model = _model(rtype)
    except (KeyError, ValueError, AttributeError):
        return [
            Issue(
                "validation.unknown_resource_type",
                f"{rtype!r} is not an R4 resource type",
                field="resourceType",
                value=rtype[:64],
            )
        ]
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        issues = []
        # The input is read only to choose the words; it never goes into the issue.
        for err in exc.errors(include_url=False)[:MAX_ISSUES]:
            loc = tuple(err["loc"])
            field = _path(rtype, loc)
            code, severity, message = _plain(field, err)
            # One cause per element and problem, whichever repetition or record it is in.
            issues.append(
                Issue(code, message, field=field, value=_path(rtype, loc, indexes=False), severity=severity)
            )
        return issues
    except Exception as exc:
        return [
            Issue(
                "validation.invalid_element",
                f"{rtype}: model check failed ({type(exc).__name__})",
                field=rtype,
            )
        ]
    return []


@cache
def validator_id() -> str:
    """Which validator gives verdicts (kept with cached verdicts: another one decides afresh)."""
    from importlib.metadata import version

    return f"fhir.resources {version('fhir.resources')} R4B; fastcheck {FASTCHECK_VERSION}"


def quick_validate(resource: dict[str, Any]) -> list[Issue]:
    """``validate``'s answer, from the compiled pre-check when it is certain the record is clean
    (most are; ~7x cheaper), else from the models, which word the precise issues."""
    return [] if certainly_clean(resource) else validate(resource)


def as_mapped(resource: dict[str, Any], issues: list[Issue]) -> dict[str, Any]:
    """The resource as the mapping should see it after these issues: wrong-typed primitives left out."""
    wrong = wrong_type_paths(issues)
    return without_elements(resource, wrong) if wrong else resource


def check(resource: dict[str, Any]) -> tuple[list[Issue], dict[str, Any]]:
    """Validate, and the resource as the mapping should see it: wrong-typed primitives left out."""
    issues = quick_validate(resource)
    return issues, as_mapped(resource, issues)


def settle(issues: Iterable[Issue]) -> list[Issue]:
    """Validation issues of a record that still mapped: warnings, except a wrong JSON type.

    An element of the wrong JSON type was left out of the mapping, so what the hospital sent
    there is not in the registry: that stays an error for staff to fix at the source.
    """
    return [
        i if i.code == "validation.wrong_type" or i.severity == "warning" else replace(i, severity="warning")
        for i in issues
    ]


def wrong_type_paths(issues: Iterable[Issue]) -> list[str]:
    """The element paths whose JSON type is wrong (to be left out when mapping what is intact)."""
    return [issue.field for issue in issues if issue.code == "validation.wrong_type"]


def without_elements(resource: dict[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """A copy of ``resource`` without the elements at ``paths`` (``Type.a[0].b`` as from validate).

    A primitive of the wrong JSON type (a number as ``status``) would otherwise reach the
    mapping, which expects FHIR's types; left out, it is simply missing there.
    """
    cleaned = copy.deepcopy(resource)
    for path in paths:
        steps: list[str | int] = []
        for name, index in _STEP.findall(path.partition(".")[2]):
            steps.append(name)
            if index:
                steps.append(int(index))
        parent: Any = cleaned
        for step in steps[:-1]:
            try:
                parent = parent[step]
            except (KeyError, IndexError, TypeError):
                parent = None
                break
        last = steps[-1] if steps else None
        if isinstance(parent, dict) and isinstance(last, str):
            parent.pop(last, None)
        elif isinstance(parent, list) and isinstance(last, int) and last < len(parent):
            parent[last] = None
    return cleaned


_STEP = re.compile(r"([^.\[\]]+)(?:\[(\d+)\])?")
