"""Element navigation over plain JSON dicts: the hot loop of every compiled path.

Each factory returns a closure ``(this, env) -> list`` that applies a run of steps to the
output of ``base`` (or to ``this`` when the run starts the expression). The loops are written
out rather than shared through per-step helpers: a Python call per step per item is the
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


def _walk(coll: list[Any], steps: tuple[tuple[str, bool], ...]) -> list[Any]:
    """Apply the member steps ``(name, is_choice_base)`` to every item of ``coll``."""
    for name, choice in steps:
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
                    # JSON null inside a primitive array marks an entry that only has an
                    # extension: it is no value.
                    if None in value:
                        out.extend(v for v in value if v is not None)
                    else:
                        out.extend(value)
                else:
                    out.append(value)
        if not out:
            return out
        coll = out
    return coll


def member_path(names: tuple[str, ...], base: Fn | None) -> Fn:
    """``base.a.b.c`` as one closure.

    The input is nearly always one resource or element, and most steps lead to one object
    (``subject.reference``, ``performer.actor`` with one performer): that walk follows single
    dicts without building a collection per step, and only from the first step that yields
    several items walks collections (``_walk``).
    """
    steps = tuple((name, name in CHOICE_BASES) for name in names)
    first, first_choice = steps[0]
    # Each later step with the steps from it on, for a walk that meets a list before it.
    later = tuple((name, choice, steps[i:]) for i, (name, choice) in enumerate(steps) if i)

    def path(this: list[Any], env: Env) -> list[Any]:
        if len(this) != 1:
            return _walk(this, steps)
        item = this[0]
        if item.__class__ is not dict:
            return []
        value = item.get(first)
        if value is None:
            if not first_choice:
                return []
            value = choice_value(item, first)
            if value is None:
                return []
        for name, choice, remaining in later:
            if value.__class__ is not dict:
                if value.__class__ is not list:
                    return []
                if len(value) != 1 or value[0].__class__ is not dict:
                    return _walk(value, remaining)  # _walk skips nulls: they are not dicts
                value = value[0]  # a one-item array, the commonest kind: still one object
            item = value
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

    if base is None:
        return path

    def step(this: list[Any], env: Env) -> list[Any]:
        return path(base(this, env), env)

    return step


def resource_type_filter(type_name: str) -> Fn:
    """``Patient`` at the start of an expression: the input if it is a Patient resource."""

    def start(this: list[Any], env: Env) -> list[Any]:
        return [x for x in this if x.__class__ is dict and x.get("resourceType") == type_name]

    return start


def typed_member(name: str, type_name: str, base: Fn | None, then: tuple[str, ...] = ()
                 ) -> Fn:
    """``base.name.ofType(T)``: read the JSON key ``name`` + T (``valueCoding``), then
    follow the element names ``then`` (``.start``) if any.

    When the item has a plain ``name`` key instead (a non-choice element), its values are
    kept if they can be of type T (see fhir_types.value_matches).
    """
    keys = tuple(name + suffix for suffix in choice_suffixes(type_name))

    def of_item(item: Any) -> list[Any]:
        if item.__class__ is not dict:
            return []
        for key in keys:
            value = item.get(key)
            if value is not None:
                if value.__class__ is list:
                    return [v for v in value if v is not None]
                return [value]
        value = item.get(name)
        if value is None:
            return []
        return [v for v in (value if value.__class__ is list else (value,))
                if v is not None and value_matches(v, type_name)]

    def navigate(coll: list[Any]) -> list[Any]:
        if len(coll) == 1:  # the usual case: one resource or element
            return of_item(coll[0])
        out: list[Any] = []
        for item in coll:
            out.extend(of_item(item))
        return out

    if then:
        tail = member_path(then, None)

        if base is None:

            def start_then(this: list[Any], env: Env) -> list[Any]:
                values = of_item(this[0]) if len(this) == 1 else navigate(this)
                return tail(values, env) if values else values

            return start_then

        def step_then(this: list[Any], env: Env) -> list[Any]:
            values = navigate(base(this, env))
            return tail(values, env) if values else values

        return step_then

    if base is None:

        def start(this: list[Any], env: Env) -> list[Any]:
            return of_item(this[0]) if len(this) == 1 else navigate(this)

        return start

    def step(this: list[Any], env: Env) -> list[Any]:
        return navigate(base(this, env))

    return step
