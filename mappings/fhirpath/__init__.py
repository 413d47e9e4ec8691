"""FHIRPath compiled to Python closures over plain JSON dicts.

``compile_path(expr)`` parses and compiles once; the returned function evaluates the
expression against a resource (a dict from ``orjson.loads``) and returns a list, the
FHIRPath collection. No per-call parsing, no model objects: this is the mapping hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mappings.fhirpath.compiler import Compiler
from mappings.fhirpath.errors import (
    FHIRPathError,
    FHIRPathEvaluationError,
    FHIRPathSyntaxError,
)
from mappings.fhirpath.parser import parse
from mappings.fhirpath.runtime import Compiled, Env, Fn

__all__ = [
    "Compiled",
    "Env",
    "FHIRPathError",
    "FHIRPathEvaluationError",
    "FHIRPathSyntaxError",
    "Fn",
    "compile_expression",
    "compile_path",
]


def compile_expression(expr: str, *, constants: Mapping[str, Any] | None = None,
                       variables: frozenset[str] = frozenset()) -> Compiled:
    """Compile ``expr`` to ``Compiled(fn, type_name)`` with ``fn(this, env) -> list``.

    ``constants`` are substituted at compile time (``%name``); ``variables`` are names whose
    values ``env`` supplies per evaluation (SQL-on-FHIR's ``%rowIndex``). ``env["resource"]``
    must hold the root resource. Raises FHIRPathSyntaxError.
    """
    return Compiler(expr, constants or {}, variables).compile(parse(expr))


def compile_path(expr: str, *, constants: Mapping[str, Any] | None = None
                 ) -> Callable[[Any], list[Any]]:
    """Compile ``expr`` once; the result maps a resource (or a list of items) to a list.

    >>> compile_path("code.coding.where(system = 'http://snomed.info/sct').code")(procedure)
    """
    fn = compile_expression(expr, constants=constants).fn

    def evaluate(resource: Any) -> list[Any]:
        if resource.__class__ is list:
            return fn(resource, {"resource": resource[0] if len(resource) == 1 else None})
        return fn([resource], {"resource": resource})

    return evaluate
