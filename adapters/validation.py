"""Structural validation of incoming resources against FHIR R4 models.

fhir.resources' top-level package is R5, which silently mis-reads R4 Procedures
(``performedDateTime``, ``reasonReference``); R4B shares R4's shape for the resources we take
in, so R4 data is checked against ``fhir.resources.R4B``. Validation costs ~270 µs a
resource (shared/reference/libraries.md 3.2) and rejects things real feeds send, so it is a
configurable check beside the mapping, never a gate that stops a batch:

- ``strict``: a resource with errors is staged but not mapped (``invalid``);
- ``warn``: errors are recorded against the element, and what is intact is mapped;
- ``off``: no model validation (the mapping's own rules still apply).
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

from pydantic import ValidationError

from registry_store.errors import Issue

Strictness = Literal["strict", "warn", "off"]
MAX_ISSUES = 10


@cache
def _model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource_type)


def _path(resource_type: str, loc: tuple[Any, ...]) -> str:
    out = resource_type
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith("function-"):
            out += f".{part}"
    return out


def validate(resource: dict[str, Any]) -> list[Issue]:
    """Problems with ``resource`` as FHIR R4; messages name elements, never values."""
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
        for err in exc.errors(include_input=False, include_url=False)[:MAX_ISSUES]:
            field = _path(rtype, tuple(err["loc"]))
            issues.append(
                Issue("validation.invalid_element", f"{field}: {err['msg']}", field=field, value=err["type"])
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
