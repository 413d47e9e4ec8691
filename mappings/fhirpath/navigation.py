"""Element navigation over plain JSON dicts: the hot loop of every compiled path.

Each factory returns a closure ``(this, env) -> list`` that applies one step to the output
of ``base`` (or to ``this`` when the step starts the expression). The loops are written out
in each closure rather than shared through helpers: a Python call per step per item is the
largest cost left once expressions are compiled.
"""

from __future__ import annotations

from typing import Any

from mappings.fhirpath.fhir_types import CHOICE_BASES, CHOICE_TYPES, choice_suffixes, value_matches
from mappings.fhirpath.runtime import Env, Fn

_SUFFIXES = frozenset(t[0].upper() + t[1:] for t in CHOICE_TYPES)


def choice_value(item: dict[str, Any], name: str) -> Any:
    """The value of choice element ``name[x]`` in ``item`` (``value`` -> ``valueCoding``)."""
    n = len(name)
    for key, value in item.items():
        if len(key) > n and key.startswith(name) and key[n:] in _SUFFIXES:
            return value
    return None


def _extend(out: list[Any], value: Any) -> None:
    if value.__class__ is list:
        # JSON null inside a primitive array marks an entry that only has an extension.
        if None in value:
            out.extend(v for v in value if v is not None)
        else:
            out.extend(value)
    else:
        out.append(value)


def member(name: str, base: Fn | None) -> Fn:
    """``base.name``; for choice base names also finds ``name`` + type suffix."""
    choice = name in CHOICE_BASES

    def navigate(coll: list[Any]) -> list[Any]:
        out: list[Any] = []
        for item in coll:
            if item.__class__ is dict:
                value = item.get(name)
                if value is None:
                    if not choice:
                        continue
                    value = choice_value(item, name)
                    if value is None:
                        continue
                if value.__class__ is list:
                    if None in value:
                        out.extend(v for v in value if v is not None)
                    else:
                        out.extend(value)
                else:
                    out.append(value)
        return out

    if base is None:

        def start(this: list[Any], env: Env) -> list[Any]:
            # Fast path: the expression input is usually the single resource or element.
            if len(this) == 1:
                item = this[0]
                if item.__class__ is not dict:
                    return []
                value = item.get(name)
                if value is None:
                    if not choice:
                        return []
                    value = choice_value(item, name)
                    if value is None:
                        return []
                if value.__class__ is list:
                    return [v for v in value if v is not None] if None in value else value[:]
                return [value]
            return navigate(this)

        return start

    def step(this: list[Any], env: Env) -> list[Any]:
        return navigate(base(this, env))

    return step


def member_path(names: tuple[str, ...], base: Fn | None) -> Fn:
    """``base.a.b.c`` as one closure: one call per path instead of two per step."""
    first = member(names[0], base)
    if len(names) == 1:
        return first
    rest = tuple((name, name in CHOICE_BASES) for name in names[1:])

    def path(this: list[Any], env: Env) -> list[Any]:
        coll = first(this, env)
        for name, choice in rest:
            if not coll:
                return coll
            out: list[Any] = []
            for item in coll:
                if item.__class__ is dict:
                    value = item.get(name)
                    if value is None:
                        if not choice:
                            continue
                        value = choice_value(item, name)
                        if value is None:
                            continue
                    if value.__class__ is list:
                        if None in value:
                            out.extend(v for v in value if v is not None)
                        else:
                            out.extend(value)
                    else:
                        out.append(value)
            coll = out
        return coll

    return path


def resource_type_filter(type_name: str) -> Fn:
    """``Patient`` at the start of an expression: the input if it is a Patient resource."""

    def start(this: list[Any], env: Env) -> list[Any]:
        return [x for x in this if x.__class__ is dict and x.get("resourceType") == type_name]

    return start


def typed_member(name: str, type_name: str, base: Fn | None) -> Fn:
    """``base.name.ofType(T)``: read the JSON key ``name`` + T (``valueCoding``).

    When the item has a plain ``name`` key instead (a non-choice element), its values are
    kept if they can be of type T (see fhir_types.value_matches).
    """
    keys = tuple(name + suffix for suffix in choice_suffixes(type_name))

    def navigate(coll: list[Any]) -> list[Any]:
        out: list[Any] = []
        for item in coll:
            if item.__class__ is not dict:
                continue
            for key in keys:
                value = item.get(key)
                if value is not None:
                    _extend(out, value)
                    break
            else:
                value = item.get(name)
                if value is not None:
                    for v in value if value.__class__ is list else (value,):
                        if v is not None and value_matches(v, type_name):
                            out.append(v)
        return out

    if base is None:

        def start(this: list[Any], env: Env) -> list[Any]:
            return navigate(this)

        return start

    def step(this: list[Any], env: Env) -> list[Any]:
        return navigate(base(this, env))

    return step
