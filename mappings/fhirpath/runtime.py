"""Shapes shared by the compiler and the function/operator implementations.

A compiled expression is ``fn(this, env) -> list``: ``this`` is the expression's input
collection (``$this``), ``env`` holds per-evaluation variables: ``resource`` (the root
resource, for ``%resource`` and getResourceKey) and ``rowIndex`` (SQL-on-FHIR).
Collections are plain lists; compiled functions never mutate the lists they receive, so a
result may share a list with the resource it came from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from mappings.fhirpath.errors import FHIRPathEvaluationError

Env = dict[str, Any]
Fn = Callable[[list[Any], Env], list[Any]]


class Compiled(NamedTuple):
    """A compiled sub-expression and its static type when known (``dateTime``, ``boolean``)."""

    fn: Fn
    type_name: str | None = None


def singleton_bool(coll: list[Any], what: str) -> bool | None:
    """FHIRPath singleton evaluation in a Boolean context: empty -> None, one item -> bool.

    A single non-Boolean item counts as true (specification, "Singleton Evaluation of
    Collections"); more than one item is an error.
    """
    if not coll:
        return None
    if len(coll) > 1:
        raise FHIRPathEvaluationError(f"{what} expects a single value, got {len(coll)} items")
    value = coll[0]
    return value if value.__class__ is bool else True


def singleton(coll: list[Any], what: str) -> Any:
    """The only item of ``coll`` (None when empty); an error when there are several."""
    if not coll:
        return None
    if len(coll) > 1:
        raise FHIRPathEvaluationError(f"{what} expects a single value, got {len(coll)} items")
    return coll[0]


def constant(value: Any) -> Fn:
    """A closure returning a fixed collection (a fresh list each time: callers may keep it)."""
    if value is None:
        return lambda this, env: []
    if value.__class__ is list:
        items = tuple(value)
        return lambda this, env: list(items)
    return lambda this, env: [value]
