"""The FHIRPath functions the compiler knows, as builders of closures.

Each builder gets the compiler and the ``Call`` node and returns a ``Compiled``. Arguments are
either *lambdas*, evaluated per input item with that item as ``$this`` (where, select,
exists, all, repeat), or *values*, evaluated once against the expression's ``$this``.
A function missing from ``FUNCTIONS`` is a compile error, never a silent empty result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mappings.fhirpath import operators as ops
from mappings.fhirpath.boundary import boundary
from mappings.fhirpath.errors import FHIRPathEvaluationError
from mappings.fhirpath.fhir_types import (
    CHOICE_BASES,
    COMPLEX_TYPES,
    is_resource_type,
    normalize_type,
    value_matches,
)
from mappings.fhirpath.keys import reference_keys, resource_keys
from mappings.fhirpath.navigation import choice_value
from mappings.fhirpath.nodes import Binary, Call, Literal, Member, Node, TypeSpecifier
from mappings.fhirpath.runtime import Compiled, Env, Fn, singleton, singleton_bool

if TYPE_CHECKING:
    from mappings.fhirpath.compiler import Compiler

Builder = Callable[["Compiler", Call], Compiled]


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    min_args: int
    max_args: int
    build: Builder


FUNCTIONS: dict[str, FunctionSpec] = {}


def function(name: str, min_args: int = 0, max_args: int | None = None
             ) -> Callable[[Builder], Builder]:
    def register(build: Builder) -> Builder:
        FUNCTIONS[name] = FunctionSpec(min_args, min_args if max_args is None else max_args,
                                       build)
        return build

    return register


def source(c: Compiler, node: Call) -> Compiled:
    return c.input_of(node.base)


def type_arg(c: Compiler, node: Call, arg: Node) -> str:
    if not isinstance(arg, TypeSpecifier):
        raise c.error(f"{node.name}() expects a type name", arg)
    type_name = normalize_type(arg.name)
    if type_name is None:
        raise c.error(f"unknown type {arg.name!r}", arg)
    return type_name


def int_arg(c: Compiler, node: Call, arg: Node) -> Fn:
    """A value argument that must be an integer (checked at compile time for literals)."""
    if isinstance(arg, Literal) and arg.value.__class__ is not int:
        raise c.error(f"{node.name}() expects an integer", arg)
    return c.compile(arg).fn


# -- type functions ------------------------------------------------------------------------
def type_filter(fn: Fn, type_name: str, c: Compiler, node: Node) -> Fn:
    """ofType(T) where the input no longer carries its JSON key (``first().ofType(...)``)."""
    if type_name in COMPLEX_TYPES or not (type_name[0].islower() or is_resource_type(type_name)):
        raise c.error(
            f"ofType({type_name}) must follow an element name (e.g. value.ofType({type_name})):"
            " plain JSON does not say which datatype an object is",
            node,
        )

    def of_type(this: list[Any], env: Env) -> list[Any]:
        return [v for v in fn(this, env) if value_matches(v, type_name)]

    return of_type


def is_type(typed: Fn, operand: Fn) -> Fn:
    def is_(this: list[Any], env: Env) -> list[Any]:
        values = operand(this, env)
        if not values:
            return []
        singleton(values, "is")
        return [bool(typed(this, env))]

    return is_


@function("ofType", 1)
def _of_type(c: Compiler, node: Call) -> Compiled:
    return c.typed(node.base, type_arg(c, node, node.args[0]), node)


@function("as", 1)
def _as(c: Compiler, node: Call) -> Compiled:
    return c.typed(node.base, type_arg(c, node, node.args[0]), node)


@function("is", 1)
def _is(c: Compiler, node: Call) -> Compiled:
    typed = c.typed(node.base, type_arg(c, node, node.args[0]), node)
    return Compiled(is_type(typed.fn, source(c, node).fn), "boolean")


# -- filtering and projection --------------------------------------------------------------
@function("where", 1)
def _where(c: Compiler, node: Call) -> Compiled:
    src = source(c, node)
    fast = _where_member_equals(c, src.fn, node.args[0])
    if fast is not None:
        return Compiled(fast, src.type_name)
    fn, crit = src.fn, c.compile(node.args[0]).fn

    def where(this: list[Any], env: Env) -> list[Any]:
        out = []
        for item in fn(this, env):
            r = crit([item], env)
            if r:
                if len(r) > 1:
                    raise FHIRPathEvaluationError(
                        f"where() criteria must give one Boolean, got {len(r)} items")
                if r[0] is not False:  # true, or a single non-Boolean (singleton rule)
                    out.append(item)
        return out

    return Compiled(where, src.type_name)


def _where_member_equals(c: Compiler, fn: Fn, crit: Node) -> Fn | None:
    """``where(system = 'http://...')``, the commonest criteria, without a closure per item.

    Same result as the general path: an item is kept when its element has exactly one value
    and that value equals the literal.
    """
    if not isinstance(crit, Binary) or crit.op != "=":
        return None
    sides = (crit.left, crit.right)
    members = [s for s in sides if isinstance(s, Member) and s.base is None]
    values = [v for v in map(c.static_value, sides) if v is not None]
    if len(members) != 1 or len(values) != 1 or members[0].name[0].isupper():
        return None
    name, expected = members[0].name, values[0][0]
    choice = name in CHOICE_BASES
    eq = ops.items_equal
    # A string that cannot be a date/time equals a string value exactly when ``==`` says so.
    plain = expected.__class__ is str and not expected[:1].isdigit()

    def where_equals(this: list[Any], env: Env) -> list[Any]:
        out = []
        for item in fn(this, env):
            if item.__class__ is dict:
                value = item.get(name)
                if value is None:
                    if not choice:
                        continue
                    value = choice_value(item, name)
                    if value is None:
                        continue
                if value.__class__ is str and plain:
                    if value == expected:
                        out.append(item)
                    continue
                if value.__class__ is list:
                    if len(value) != 1:
                        continue
                    value = value[0]
                if eq(value, expected):
                    out.append(item)
        return out

    return where_equals


@function("select", 1)
def _select(c: Compiler, node: Call) -> Compiled:
    fn, proj = source(c, node).fn, c.compile(node.args[0]).fn

    def select(this: list[Any], env: Env) -> list[Any]:
        out: list[Any] = []
        for item in fn(this, env):
            out.extend(proj([item], env))
        return out

    return Compiled(select)


@function("repeat", 1)
def _repeat(c: Compiler, node: Call) -> Compiled:
    fn, proj = source(c, node).fn, c.compile(node.args[0]).fn

    def repeat(this: list[Any], env: Env) -> list[Any]:
        out: list[Any] = []
        pending = list(fn(this, env))
        while pending:
            found: list[Any] = []
            for item in pending:
                found.extend(proj([item], env))
            out.extend(found)
            pending = found
        return out

    return Compiled(repeat)


@function("exists", 0, 1)
def _exists(c: Compiler, node: Call) -> Compiled:
    fn = source(c, node).fn
    if not node.args:
        return Compiled(lambda this, env: [bool(fn(this, env))], "boolean")
    crit = c.compile(node.args[0]).fn

    def exists(this: list[Any], env: Env) -> list[Any]:
        return [any(singleton_bool(crit([item], env), "exists()") for item in fn(this, env))]

    return Compiled(exists, "boolean")


@function("all", 1)
def _all(c: Compiler, node: Call) -> Compiled:
    fn, crit = source(c, node).fn, c.compile(node.args[0]).fn

    def all_(this: list[Any], env: Env) -> list[Any]:
        return [all(singleton_bool(crit([item], env), "all()") for item in fn(this, env))]

    return Compiled(all_, "boolean")


def _bool_aggregate(name: str, test: Callable[[list[bool]], bool]) -> None:
    @function(name)
    def build(c: Compiler, node: Call) -> Compiled:
        fn = source(c, node).fn

        def aggregate(this: list[Any], env: Env) -> list[Any]:
            values = fn(this, env)
            if any(v.__class__ is not bool for v in values):
                raise FHIRPathEvaluationError(f"{name}() needs Boolean items")
            return [test(values)]

        return Compiled(aggregate, "boolean")


_bool_aggregate("allTrue", lambda vs: all(vs))
_bool_aggregate("anyTrue", lambda vs: any(vs))
_bool_aggregate("allFalse", lambda vs: not any(vs))
_bool_aggregate("anyFalse", lambda vs: not all(vs))


@function("empty")
def _empty(c: Compiler, node: Call) -> Compiled:
    fn = source(c, node).fn
    return Compiled(lambda this, env: [not fn(this, env)], "boolean")


@function("not")
def _not(c: Compiler, node: Call) -> Compiled:
    fn = source(c, node).fn

    def not_(this: list[Any], env: Env) -> list[Any]:
        value = singleton_bool(fn(this, env), "not()")
        return [] if value is None else [not value]

    return Compiled(not_, "boolean")


@function("hasValue")
def _has_value(c: Compiler, node: Call) -> Compiled:
    fn = source(c, node).fn

    def has_value(this: list[Any], env: Env) -> list[Any]:
        values = fn(this, env)
        return [len(values) == 1 and values[0].__class__ not in (dict, list)]

    return Compiled(has_value, "boolean")


@function("iif", 2, 3)
def _iif(c: Compiler, node: Call) -> Compiled:
    fn = source(c, node).fn
    crit, then = c.compile(node.args[0]).fn, c.compile(node.args[1]).fn
    other = c.compile(node.args[2]).fn if len(node.args) == 3 else None

    def iif(this: list[Any], env: Env) -> list[Any]:
        focus = fn(this, env)
        if singleton_bool(crit(focus, env), "iif()") is True:
            return then(focus, env)
        return other(focus, env) if other is not None else []

    return Compiled(iif)


# -- subsetting ----------------------------------------------------------------------------
def _slice(name: str, part: slice) -> None:
    @function(name)
    def build(c: Compiler, node: Call) -> Compiled:
        src = source(c, node)
        fn = src.fn
        return Compiled(lambda this, env: fn(this, env)[part], src.type_name)


_slice("first", slice(None, 1))
_slice("last", slice(-1, None))
_slice("tail", slice(1, None))


@function("distinct")
def _distinct(c: Compiler, node: Call) -> Compiled:
    src = source(c, node)
    fn, distinct = src.fn, ops.distinct
    return Compiled(lambda this, env: distinct(fn(this, env)), src.type_name)


@function("single")
def _single(c: Compiler, node: Call) -> Compiled:
    src = source(c, node)
    fn = src.fn

    def single(this: list[Any], env: Env) -> list[Any]:
        coll = fn(this, env)
        if len(coll) > 1:
            raise FHIRPathEvaluationError(f"single() got {len(coll)} items")
        return coll

    return Compiled(single, src.type_name)


@function("skip", 1)
def _skip(c: Compiler, node: Call) -> Compiled:
    src, n = source(c, node), int_arg(c, node, node.args[0])
    fn = src.fn

    def skip(this: list[Any], env: Env) -> list[Any]:
        count = singleton(n(this, env), "skip()")
        return fn(this, env)[max(count or 0, 0):]

    return Compiled(skip, src.type_name)


@function("take", 1)
def _take(c: Compiler, node: Call) -> Compiled:
    src, n = source(c, node), int_arg(c, node, node.args[0])
    fn = src.fn

    def take(this: list[Any], env: Env) -> list[Any]:
        count = singleton(n(this, env), "take()")
        return fn(this, env)[: max(count or 0, 0)]

    return Compiled(take, src.type_name)


@function("count")
def _count(c: Compiler, node: Call) -> Compiled:
    fn = source(c, node).fn
    return Compiled(lambda this, env: [len(fn(this, env))], "integer")


@function("isDistinct")
def _is_distinct(c: Compiler, node: Call) -> Compiled:
    fn = source(c, node).fn

    def is_distinct(this: list[Any], env: Env) -> list[Any]:
        coll = fn(this, env)
        return [len(ops.distinct(coll)) == len(coll)]

    return Compiled(is_distinct, "boolean")


def _combining(name: str, combine: Callable[[list[Any], list[Any]], list[Any]]) -> None:
    @function(name, 1)
    def build(c: Compiler, node: Call) -> Compiled:
        fn, other = source(c, node).fn, c.compile(node.args[0]).fn
        return Compiled(lambda this, env: combine(fn(this, env), other(this, env)))


_combining("union", ops.union)
_combining("combine", lambda a, b: a + b)
_combining("intersect", lambda a, b: [x for x in ops.distinct(a)
                                      if any(ops.items_equal(x, y) for y in b)])
_combining("exclude", lambda a, b: [x for x in a if not any(ops.items_equal(x, y) for y in b)])


# -- FHIR and SQL-on-FHIR functions -----------------------------------------------------------
@function("extension", 1)
def _extension(c: Compiler, node: Call) -> Compiled:
    fn, url_fn = source(c, node).fn, c.compile(node.args[0]).fn

    def extension(this: list[Any], env: Env) -> list[Any]:
        url = singleton(url_fn(this, env), "extension()")
        out = []
        for item in fn(this, env):
            if item.__class__ is dict:
                for ext in item.get("extension") or ():
                    if ext.__class__ is dict and ext.get("url") == url:
                        out.append(ext)
        return out

    return Compiled(extension)


@function("getResourceKey")
def _get_resource_key(c: Compiler, node: Call) -> Compiled:
    fn = source(c, node).fn
    return Compiled(lambda this, env: resource_keys(fn(this, env)), "string")


@function("getReferenceKey", 0, 1)
def _get_reference_key(c: Compiler, node: Call) -> Compiled:
    fn = source(c, node).fn
    type_name = type_arg(c, node, node.args[0]) if node.args else None
    if type_name is not None and not is_resource_type(type_name):
        raise c.error(f"getReferenceKey() expects a resource type, got {type_name!r}", node)
    return Compiled(lambda this, env: reference_keys(fn(this, env), type_name), "string")


@function("join", 0, 1)
def _join(c: Compiler, node: Call) -> Compiled:
    fn = source(c, node).fn
    sep_fn = c.compile(node.args[0]).fn if node.args else (lambda this, env: [""])

    def join(this: list[Any], env: Env) -> list[Any]:
        values = fn(this, env)  # empty input joins to "" (the conformance suite says so)
        sep = singleton(sep_fn(this, env), "join()")
        if any(v.__class__ is not str for v in values):
            raise FHIRPathEvaluationError("join() needs string items")
        return [(sep or "").join(values)]

    return Compiled(join, "string")


def _boundary(name: str, high: bool) -> None:
    @function(name, 0, 1)
    def build(c: Compiler, node: Call) -> Compiled:
        src = source(c, node)
        fn, kind = src.fn, src.type_name
        precision = int_arg(c, node, node.args[0]) if node.args else None

        def bound(this: list[Any], env: Env) -> list[Any]:
            value = singleton(fn(this, env), f"{name}()")
            if value is None:
                return []
            digits = singleton(precision(this, env), f"{name}()") if precision else None
            result = boundary(value, kind, digits, high)
            return [] if result is None else [result]

        return Compiled(bound, kind)


_boundary("lowBoundary", False)
_boundary("highBoundary", True)


@function("trace", 1, 2)
def _trace(c: Compiler, node: Call) -> Compiled:
    # Logging values would leak patient data into logs: trace() is accepted and a no-op.
    return source(c, node)


# String, math and conversion functions register themselves on import.
from mappings.fhirpath import string_functions  # noqa: E402,F401
