"""SQL-on-FHIR ``getResourceKey()`` and ``getReferenceKey([type])``.

The specification leaves the key's form to the implementation but requires
``getResourceKey()`` of a resource to equal ``getReferenceKey()`` of a reference to it. Here
the key is the resource id: ``Patient/p1``, ``http://host/fhir/Patient/p1/_history/3`` and
``urn:uuid:p1`` all give ``p1`` (bundles built with ``urn:uuid:`` full URLs, e.g. Synthea,
use the same value as the resource id).
"""

from __future__ import annotations

import re
from typing import Any

_RELATIVE = re.compile(
    r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$"
)
_URN = re.compile(r"urn:(?:uuid|oid):(.+)$")


def resource_keys(coll: list[Any]) -> list[Any]:
    return [
        item["id"]
        for item in coll
        if item.__class__ is dict and "resourceType" in item and item.get("id") is not None
    ]


def reference_key(reference: Any, type_name: str | None) -> str | None:
    """Key of the resource a Reference points to, or None (no literal reference, contained
    ``#id`` reference, or of another type than ``type_name``)."""
    if reference.__class__ is not dict:
        return None
    literal = reference.get("reference")
    if literal.__class__ is not str:
        return None
    ref_type: Any
    kind, slash, rest = literal.partition("/")
    if slash and "/" not in rest and rest and kind[:1].isupper() and ":" not in kind:
        ref_type, key = kind, rest  # the usual "Patient/123", without a regex
    elif m := _RELATIVE.search(literal):
        ref_type, key = m.group(1), m.group(2)
    else:
        u = _URN.match(literal)
        if not u:
            return None
        # A urn carries no type; Reference.type may. Without either, the type cannot be
        # refuted, so the key is returned.
        ref_type, key = reference.get("type"), u.group(1)
        if ref_type.__class__ is str and "/" in ref_type:  # a canonical StructureDefinition url
            ref_type = ref_type.rsplit("/", 1)[1]
    if type_name is not None and ref_type is not None and ref_type != type_name:
        return None
    return key


def reference_keys(coll: list[Any], type_name: str | None) -> list[Any]:
    out = []
    for item in coll:
        key = reference_key(item, type_name)
        if key is not None:
            out.append(key)
    return out
