"""A staged record shown to staff: pretty JSON, PHI masked for some roles, the offending field marked.

The masking works on the parsed resource, never on text, so a name cannot slip through in an
odd spelling; input that does not parse is hidden entirely from masked roles because nothing
can be said about what it holds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MASK = "•••"
# Elements that identify a person, hidden whole (numbers and structure inside them too: an
# address can carry geolocation as decimals).
PHI_KEYS = frozenset({"name", "telecom", "address", "birthDate", "photo", "contact", "communication"})
PHI_PREFIXES = ("deceased", "multipleBirth")
# Everything else is an allow-list: string values are shown only under these keys, which hold
# codes, ids and structure; any other string (narrative, free-text answers, notes, extension
# values such as a mother's maiden name, identifier values, reference displays) is masked.
# Numbers and booleans outside PHI_KEYS are kept: scores, ranks, flags.
STRUCTURE_KEYS = frozenset(
    {
        "resourceType", "id", "status", "system", "code", "version", "linkId", "reference", "type",
        "gender", "use", "intent", "priority", "language", "unit", "comparator", "mode", "fullUrl",
        "questionnaire", "instantiatesCanonical",
    }
)  # fmt: skip
# ``display`` is kept only where it names a code (a Coding), never in a reference; ``url`` only
# where it names an extension (an attachment's url could point anywhere).
_CODING_PARENTS = frozenset({"coding", "valueCoding", "tag", "security", "class", "answerCoding"})
_EXTENSION_PARENTS = frozenset({"extension", "modifierExtension"})
# Keys holding dates and times; kept when the value is a FHIR date/dateTime/instant.
_DATE_KEY = re.compile(
    r"^(start|end|date|issued|authored|recorded|lastUpdated|occurrence\w*|\w+(Date|DateTime|Instant))$"
)
_DATE_VALUE = re.compile(r"^\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$")


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


def mask_phi(node: Any, key: str = "", parent: str = "") -> Any:
    """A copy of a FHIR resource where only structure, codes, ids and dates stay readable.

    ``key`` is the element ``node`` is the value of, ``parent`` the element holding that one
    (so a Coding's ``display`` is told apart from a Reference's).
    """
    if isinstance(node, list):
        return [mask_phi(v, key, parent) for v in node]
    if isinstance(node, dict):
        if key == "meta":
            return node  # versionId, lastUpdated, profiles, tags: about the record, not the person
        return {k: MASK if _hides_person(k) else mask_phi(v, k, key) for k, v in node.items()}
    if isinstance(node, str):
        return node if _shown(key, parent, node) else MASK
    return node


def _hides_person(key: str) -> bool:
    return key in PHI_KEYS or key.startswith(PHI_PREFIXES)


def _shown(key: str, parent: str, value: str) -> bool:
    if key in STRUCTURE_KEYS:
        return True
    if key == "display":
        return parent in _CODING_PARENTS
    if key == "url":
        return parent in _EXTENSION_PARENTS
    return bool(_DATE_KEY.match(key) and _DATE_VALUE.match(value))


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
