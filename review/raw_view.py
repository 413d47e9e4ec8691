"""A staged record shown to staff: pretty JSON, PHI masked for some roles, the offending field marked.

The masking works on the parsed resource, never on text, so a name cannot slip through in an
odd spelling; input that does not parse is hidden entirely from masked roles because nothing
can be said about what it holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MASK = "•••"
# Elements that identify a person (FHIR Patient/RelatedPerson/Practitioner and references).
PHI_KEYS = frozenset({"name", "telecom", "address", "birthDate", "photo", "contact"})


@dataclass(frozen=True)
class RawLine:
    text: str
    marked: bool

    @property
    def indent(self) -> str:
        """Leading spaces, kept outside the highlight so the mark hugs the field."""
        return self.text[: len(self.text) - len(self.text.lstrip(" "))]

    @property
    def body(self) -> str:
        return self.text.lstrip(" ")


def mask_phi(node: Any) -> Any:
    """A copy of a FHIR resource with identifying values replaced by a mask."""
    if isinstance(node, list):
        return [mask_phi(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in PHI_KEYS:
            out[key] = MASK
        elif key == "identifier":
            # Keep the system (which kind of id) but not the MRN / SSN itself.
            out[key] = _mask_identifiers(value)
        elif key == "display" and "reference" in node:
            out[key] = MASK  # reference displays often carry the patient's name
        else:
            out[key] = mask_phi(value)
    return out


def _mask_identifiers(value: Any) -> Any:
    if isinstance(value, list):
        return [_mask_identifiers(v) for v in value]
    if isinstance(value, dict):
        return {k: (MASK if k == "value" else mask_phi(v)) for k, v in value.items()}
    return MASK


def offending_token(value: str | None) -> str | None:
    """The bare code of an error value (``cpt|22899`` → ``22899``), which the raw JSON holds."""
    if not value:
        return None
    return value.rsplit("|", 1)[-1] or None


def render_raw(raw: bytes, *, masked: bool, field: str, value: str | None) -> list[RawLine] | None:
    """Lines of the record; None when it cannot be shown to this role."""
    try:
        resource = json.loads(raw)
    except ValueError:
        if masked:
            return None
        text = raw.decode("utf-8", errors="replace")
        return [RawLine(line, False) for line in text.splitlines()]
    if masked:
        resource = mask_phi(resource)
    token = offending_token(value)
    needle = json.dumps(token) if token else None
    key = field.split(" ", 1)[0].split(".")[-1] if field else ""
    key_prefix = f'"{key}":' if key else None
    lines = []
    for line in json.dumps(resource, indent=2, ensure_ascii=False).splitlines():
        stripped = line.strip()
        marked = bool(
            (needle and (stripped.startswith(f'"code": {needle}') or stripped.rstrip(",") == needle))
            or (needle and stripped.rstrip(",").endswith(f": {needle}"))
            or (key_prefix and stripped.startswith(key_prefix))
        )
        lines.append(RawLine(line, marked))
    return lines
