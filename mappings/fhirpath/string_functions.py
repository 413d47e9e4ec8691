"""String, math and conversion functions (registered into functions.FUNCTIONS).

All of them take a single-item input: empty input gives empty output, several items are an
evaluation error, as the FHIRPath specification says.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mappings.fhirpath.errors import FHIRPathEvaluationError
from mappings.fhirpath.functions import function, source
from mappings.fhirpath.nodes import Call, Literal
from mappings.fhirpath.runtime import Compiled, Env, singleton

if TYPE_CHECKING:
    from mappings.fhirpath.compiler import Compiler

_RESULT_TYPES = {"startsWith": "boolean", "endsWith": "boolean", "contains": "boolean",
                 "matches": "boolean", "indexOf": "integer", "length": "integer"}


def _string_function(name: str, nargs: tuple[int, int],
                     apply: Callable[..., Any], result_type: str = "string") -> None:
    """Register ``name`` taking a single string input and value arguments."""

    @function(name, *nargs)
    def build(c: Compiler, node: Call) -> Compiled:
        fn = source(c, node).fn
        arg_fns = [c.compile(arg).fn for arg in node.args]
        for arg in node.args:
            if isinstance(arg, Literal) and name in ("matches", "replaceMatches"):
                _check_regex(c, arg)

        def call(this: list[Any], env: Env) -> list[Any]:
            value = singleton(fn(this, env), f"{name}()")
            if value is None:
                return []
            if value.__class__ is not str:
                raise FHIRPathEvaluationError(f"{name}() needs a string input")
            args = [singleton(a(this, env), f"{name}()") for a in arg_fns]
            if any(a is None for a in args):
                return []
            try:
                result = apply(value, *args)
            except (TypeError, ValueError, re.error):
                # Python's message could quote the data (a regex taken from a resource).
                raise FHIRPathEvaluationError(f"{name}() got an argument it cannot use") from None
            return [] if result is None else [result]

        return Compiled(call, _RESULT_TYPES.get(name, result_type))


def _check_regex(c: Compiler, arg: Literal) -> None:
    if arg.value.__class__ is str:
        try:
            re.compile(arg.value)
        except re.error as exc:
            raise c.error(f"invalid regular expression: {exc}", arg) from None


def _substring(value: str, start: int, length: int | None = None) -> str | None:
    if start < 0 or start >= len(value):
        return None
    return value[start:] if length is None else value[start : start + max(length, 0)]


_string_function("startsWith", (1, 1), lambda s, p: s.startswith(p))
_string_function("endsWith", (1, 1), lambda s, p: s.endswith(p))
_string_function("contains", (1, 1), lambda s, p: p in s)
_string_function("matches", (1, 1), lambda s, p: re.search(p, s, re.DOTALL) is not None)
_string_function("replaceMatches", (2, 2), lambda s, p, r: re.sub(p, r, s, flags=re.DOTALL))
_string_function("replace", (2, 2), lambda s, p, r: s.replace(p, r))
_string_function("indexOf", (1, 1), lambda s, p: s.find(p))
_string_function("substring", (1, 2), _substring)
_string_function("lower", (0, 0), str.lower)
_string_function("upper", (0, 0), str.upper)
_string_function("trim", (0, 0), str.strip)
_string_function("length", (0, 0), len)


@function("split", 1)
def _split(c: Compiler, node: Call) -> Compiled:
    fn, sep_fn = source(c, node).fn, c.compile(node.args[0]).fn

    def split(this: list[Any], env: Env) -> list[Any]:
        value = singleton(fn(this, env), "split()")
        sep = singleton(sep_fn(this, env), "split()")
        if value is None or sep is None:
            return []
        if value.__class__ is not str or sep.__class__ is not str:
            raise FHIRPathEvaluationError("split() needs strings")
        return value.split(sep) if sep else list(value)

    return Compiled(split, "string")


def _to_string(value: Any) -> str | None:
    if value.__class__ is bool:
        return "true" if value else "false"
    if value.__class__ in (str, int, float):
        return str(value)
    return None


def _to_integer(value: Any) -> int | None:
    if value.__class__ is bool:
        return int(value)
    if value.__class__ is int:
        return value
    if value.__class__ is str and re.fullmatch(r"[+-]?[0-9]+", value):
        return int(value)
    return None


def _to_decimal(value: Any) -> float | None:
    if value.__class__ is bool:
        return float(value)
    if value.__class__ in (int, float):
        return float(value)
    if value.__class__ is str and re.fullmatch(r"[+-]?[0-9]+(\.[0-9]+)?", value):
        return float(value)
    return None


def _conversion(name: str, convert: Callable[[Any], Any], result_type: str) -> None:
    @function(name)
    def build(c: Compiler, node: Call) -> Compiled:
        fn = source(c, node).fn

        def call(this: list[Any], env: Env) -> list[Any]:
            value = singleton(fn(this, env), f"{name}()")
            result = None if value is None else convert(value)
            return [] if result is None else [result]

        return Compiled(call, result_type)

    @function("convertsTo" + name[2:])
    def build_check(c: Compiler, node: Call) -> Compiled:
        fn = source(c, node).fn

        def check(this: list[Any], env: Env) -> list[Any]:
            value = singleton(fn(this, env), f"convertsTo{name[2:]}()")
            return [] if value is None else [convert(value) is not None]

        return Compiled(check, "boolean")


_conversion("toString", _to_string, "string")
_conversion("toInteger", _to_integer, "integer")
_conversion("toDecimal", _to_decimal, "decimal")


def _math(name: str, apply: Callable[[float], Any]) -> None:
    @function(name)
    def build(c: Compiler, node: Call) -> Compiled:
        src = source(c, node)
        fn = src.fn

        def call(this: list[Any], env: Env) -> list[Any]:
            value = singleton(fn(this, env), f"{name}()")
            if value is None:
                return []
            if value.__class__ not in (int, float):
                raise FHIRPathEvaluationError(f"{name}() needs a number")
            return [apply(value)]

        return Compiled(call, src.type_name if name == "abs" else "integer")


_math("abs", abs)
_math("ceiling", math.ceil)
_math("floor", math.floor)
_math("truncate", math.trunc)


@function("round", 0, 1)
def _round(c: Compiler, node: Call) -> Compiled:
    fn = source(c, node).fn
    digits_fn = c.compile(node.args[0]).fn if node.args else (lambda this, env: [0])

    def round_(this: list[Any], env: Env) -> list[Any]:
        value = singleton(fn(this, env), "round()")
        if value is None:
            return []
        if value.__class__ not in (int, float):
            raise FHIRPathEvaluationError("round() needs a number")
        digits = singleton(digits_fn(this, env), "round()") or 0
        # FHIRPath rounds half away from zero; Python's round() rounds half to even.
        factor = 10 ** digits
        rounded = math.floor(abs(value) * factor + 0.5) / factor
        return [math.copysign(rounded, value)]

    return Compiled(round_, "decimal")
