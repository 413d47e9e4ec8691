"""Compile a FHIRPath syntax tree into Python closures over plain JSON dicts.

Everything that can be decided once is decided here: names are resolved, constants are
substituted, ``x.ofType(T)`` becomes a direct JSON-key read (``valueCoding``), unknown
functions and undefined constants are rejected. What is left for evaluation is list walking.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mappings.fhirpath import operators as ops
from mappings.fhirpath.errors import FHIRPathEvaluationError, FHIRPathSyntaxError
from mappings.fhirpath.fhir_types import (
    CHOICE_BASES,
    CHOICE_TYPES,
    normalize_type,
    suffix_type,
)
from mappings.fhirpath.functions import FUNCTIONS, is_type, type_filter
from mappings.fhirpath.navigation import member_path, resource_type_filter, typed_member
from mappings.fhirpath.nodes import (
    Binary,
    Call,
    EmptyLiteral,
    External,
    Indexer,
    Literal,
    Member,
    Node,
    TypeOp,
    TypeSpecifier,
    Unary,
    Variable,
)
from mappings.fhirpath.runtime import Compiled, Env, Fn, constant, singleton

# Constants FHIRPath defines for every expression (a view constant of the same name wins).
RESERVED_CONSTANTS: dict[str, str] = {
    "ucum": "http://unitsofmeasure.org",
    "sct": "http://snomed.info/sct",
    "loinc": "http://loinc.org",
}
# Names of the resource being evaluated; its value comes from ``env["resource"]``.
_ROOT_NAMES = frozenset({"resource", "rootResource", "context"})
_BOOLEAN_OPS = frozenset({"=", "!=", "~", "!~", "<", ">", "<=", ">=", "and", "or", "xor",
                          "implies", "in", "contains"})


def _identity(this: list[Any], env: Env) -> list[Any]:
    return this


def _root(this: list[Any], env: Env) -> list[Any]:
    resource = env.get("resource")
    return [] if resource is None else [resource]


class Compiler:
    """Compiles one expression; holds the expression text for error messages."""

    def __init__(self, expression: str, constants: Mapping[str, Any],
                 variables: frozenset[str]) -> None:
        self.expression = expression
        self.constants = constants
        self.variables = variables

    def error(self, reason: str, node: Node | None = None) -> FHIRPathSyntaxError:
        return FHIRPathSyntaxError(reason, self.expression, None if node is None else node.pos)

    def compile(self, node: Node) -> Compiled:
        method = getattr(self, "_" + type(node).__name__.lower())
        result: Compiled = method(node)
        return result

    def static_value(self, node: Node) -> tuple[Any] | None:
        """``(value,)`` when ``node`` is a single value known at compile time (a literal or a
        scalar constant), else None."""
        if isinstance(node, Literal):
            return (node.value,)
        if isinstance(node, External) and node.name in self.constants:
            value = self.constants[node.name]
            if value is not None and value.__class__ is not list:
                return (value,)
        return None

    def input_of(self, base: Node | None) -> Compiled:
        """The collection a step applies to: its base, or ``$this`` at expression start."""
        if base is None:
            return Compiled(_identity)
        return self.compile(base)

    # -- terms ---------------------------------------------------------------------------
    def _literal(self, node: Literal) -> Compiled:
        return Compiled(constant(node.value), node.type_name)

    def _emptyliteral(self, node: EmptyLiteral) -> Compiled:
        return Compiled(constant(None))

    def _variable(self, node: Variable) -> Compiled:
        if node.name == "this":
            return Compiled(_identity)
        raise self.error(f"${node.name} is not supported", node)

    def _external(self, node: External) -> Compiled:
        name = node.name
        if name in self.constants:
            value = self.constants[name]
            return Compiled(constant(value), _python_type(value))
        if name in _ROOT_NAMES:
            return Compiled(_root)
        if name in self.variables:
            return Compiled(lambda this, env: [env[name]], None)
        if name in RESERVED_CONSTANTS:
            return Compiled(constant(RESERVED_CONSTANTS[name]), "string")
        raise self.error(f"undefined constant %{name}", node)

    def _typespecifier(self, node: TypeSpecifier) -> Compiled:
        raise self.error(f"type name {node.name!r} used as a value", node)

    # -- navigation ----------------------------------------------------------------------
    def _member(self, node: Member) -> Compiled:
        if node.base is None and node.name[0].isupper():
            return Compiled(resource_type_filter(node.name))
        # Fuse a run of element names (code.coding.code) into one closure.
        names = [node.name]
        base = node.base
        while isinstance(base, Member) and not (base.base is None and base.name[0].isupper()):
            names.append(base.name)
            base = base.base
        path = tuple(reversed(names))
        typed = self.typed_element(base)
        if typed is not None:
            # ``performed.ofType(Period).start``: the typed read and the path in one closure.
            return Compiled(self.typed(*typed, then=path).fn, _static_type_of_key(node.name))
        base_fn = None if base is None else self.compile(base).fn
        return Compiled(member_path(path, base_fn), _static_type_of_key(node.name))

    @staticmethod
    def typed_element(node: Node | None) -> tuple[Member, str, Node] | None:
        """``(element, type, node)`` when ``node`` is ``element.ofType(T)`` / ``element as T``
        with a valid T (else the general compile reports the error)."""
        if isinstance(node, Call) and node.name in ("ofType", "as") and len(node.args) == 1:
            operand, arg = node.base, node.args[0]
            if not isinstance(arg, TypeSpecifier):
                return None
            type_spec = arg.name
        elif isinstance(node, TypeOp) and node.op == "as":
            operand, type_spec = node.operand, node.type_name
        else:
            return None
        if (not isinstance(operand, Member) or (operand.base is None and operand.name[0].isupper())
                or normalize_type(type_spec) is None):
            return None
        return operand, type_spec, node

    def _indexer(self, node: Indexer) -> Compiled:
        base = self.compile(node.base)
        index_fn = self.compile(node.index).fn
        base_fn = base.fn

        def index(this: list[Any], env: Env) -> list[Any]:
            coll = base_fn(this, env)
            i = singleton(index_fn(this, env), "indexer")
            if i is None:
                return []
            if i.__class__ is not int:
                raise FHIRPathEvaluationError("an index must be an integer")
            return [coll[i]] if 0 <= i < len(coll) else []

        return Compiled(index, base.type_name)

    def typed(self, base: Node | None, type_spec: str, node: Node,
              then: tuple[str, ...] = ()) -> Compiled:
        """``base.ofType(T)`` / ``base as T``, followed by the element names ``then`` (only
        when ``base`` is an element, see typed_element)."""
        type_name = normalize_type(type_spec)
        if type_name is None:
            raise self.error(f"unknown type {type_spec!r}", node)
        if isinstance(base, Member) and not (base.base is None and base.name[0].isupper()):
            inner = None if base.base is None else self.compile(base.base).fn
            return Compiled(typed_member(base.name, type_name, inner, then), type_name)
        # Not directly after an element name: the JSON key that told the type is gone.
        source = self.input_of(base)
        return Compiled(type_filter(source.fn, type_name, self, node), type_name)

    def _typeop(self, node: TypeOp) -> Compiled:
        if node.op == "as":
            return self.typed(node.operand, node.type_name, node)
        return Compiled(is_type(self.typed(node.operand, node.type_name, node).fn,
                                self.compile(node.operand).fn), "boolean")

    def _call(self, node: Call) -> Compiled:
        spec = FUNCTIONS.get(node.name)
        if spec is None:
            raise self.error(f"unknown or unsupported function {node.name}()", node)
        if not spec.min_args <= len(node.args) <= spec.max_args:
            expected = (str(spec.min_args) if spec.min_args == spec.max_args
                        else f"{spec.min_args} to {spec.max_args}")
            raise self.error(
                f"{node.name}() takes {expected} argument(s), got {len(node.args)}", node
            )
        return spec.build(self, node)

    # -- operators -----------------------------------------------------------------------
    def _unary(self, node: Unary) -> Compiled:
        operand = self.compile(node.operand)
        if node.op == "+":
            return operand
        fn = operand.fn
        return Compiled(lambda this, env: ops.negate(fn(this, env)), operand.type_name)

    def _binary(self, node: Binary) -> Compiled:
        op = node.op
        if op in ("and", "or"):
            return Compiled(self.logic_chain(node), "boolean")
        left = self.compile(node.left)
        right = self.compile(node.right)
        lf, rf = left.fn, right.fn
        kind = "boolean" if op in _BOOLEAN_OPS else None
        if op == "=":
            return Compiled(self.equal(node, lf, rf), kind)
        if op == "|":
            union = ops.union
            return Compiled(lambda this, env: union(lf(this, env), rf(this, env)))
        binary = _BINARY.get(op)
        if binary is None:
            raise self.error(f"operator {op!r} is not supported", node)
        return Compiled(lambda this, env: binary(op, lf(this, env), rf(this, env)),
                        kind or _arithmetic_type(left.type_name, right.type_name, op))

    def logic_chain(self, node: Binary) -> Fn:
        """``a or b or c`` (or ``and``): one closure over the whole chain.

        Three-valued ``or``/``and`` are associative, and the chain is evaluated left to right
        with the short cut the pairwise closures take, so the result and the operands
        evaluated are the same.
        """
        op = node.op
        operands: list[Node] = []
        current: Node = node
        while isinstance(current, Binary) and current.op == op:
            operands.append(current.right)
            current = current.left
        operands.append(current)
        operands.reverse()
        fns = [self.compile(x).fn for x in operands]
        if not all(isinstance(x, Binary) and x.op in _BOOLEAN_OPS for x in operands):
            # An operand may give several items or a non-Boolean: keep the general rules.
            fn = fns[0]
            for rf in fns[1:]:
                fn = _and_fn(fn, rf) if op == "and" else _or_fn(fn, rf)
            return fn
        # Every operand gives [] or [bool]: no singleton rules to apply.
        chain = _short_circuit(tuple(fns), decisive=op == "or")
        tests = [self.member_literal(x) for x in operands]
        names = {t[0] for t in tests if t is not None}
        if op == "or" and None not in tests and len(names) == 1:
            # ``status = 'a' or status = 'b'``: one set lookup.
            return _member_in(names.pop(), frozenset(t[1] for t in tests if t), chain)
        return chain

    def member_literal(self, node: Node) -> tuple[str, str] | None:
        """``(name, text)`` for ``name = 'text'`` (either way round) where ``name`` is one
        element of ``$this`` and ``text`` a string that cannot be a date or time, so equality
        with a string value is plain string equality (see operators.items_equal)."""
        if not isinstance(node, Binary) or node.op != "=":
            return None
        for member, other in ((node.left, node.right), (node.right, node.left)):
            if isinstance(member, Member) and member.base is None and not member.name[0].isupper():
                value = self.static_value(other)
                if (value is not None and value[0].__class__ is str
                        and not value[0][:1].isdigit()):
                    return member.name, value[0]
        return None

    def equal(self, node: Binary, lf: Fn, rf: Fn) -> Fn:
        right = self.static_value(node.right)
        if right is None:
            left = self.static_value(node.left)
            if left is None:
                return lambda this, env: ops.equal(lf(this, env), rf(this, env))
            lf, right = rf, left  # ``'x' = path``: equality is symmetric
        # The common ``system = 'http://...'``: compare with the known value directly.
        expected = right[0]
        eq = ops.items_equal

        def equal_literal(this: list[Any], env: Env) -> list[Any]:
            a = lf(this, env)
            if not a:
                return a
            if len(a) != 1:
                return [False]
            same = eq(a[0], expected)
            return [] if same is None else [same]

        test = self.member_literal(node)
        if test is None:
            return equal_literal
        # One element holding a string: the whole comparison is a one-text set lookup.
        return _member_in(test[0], frozenset((test[1],)), equal_literal)


def _and_fn(lf: Fn, rf: Fn) -> Fn:
    def and_(this: list[Any], env: Env) -> list[Any]:
        a = lf(this, env)
        if len(a) == 1 and a[0] is False:  # not "== [False]": 0 == False in Python
            return a
        return ops.logic("and", a, rf(this, env))

    return and_


def _or_fn(lf: Fn, rf: Fn) -> Fn:
    def or_(this: list[Any], env: Env) -> list[Any]:
        a = lf(this, env)
        if len(a) == 1 and a[0] is True:
            return a
        return ops.logic("or", a, rf(this, env))

    return or_


def _short_circuit(fns: tuple[Fn, ...], decisive: bool) -> Fn:
    """``or`` (decisive True) or ``and`` (decisive False) over operands giving [] or [bool].

    Three-valued logic: the decisive value wins at once; otherwise an empty operand
    leaves the result unknown (empty), and only all-known operands give ``not decisive``.
    """

    def short_circuit(this: list[Any], env: Env) -> list[Any]:
        unknown = False
        for fn in fns:
            result = fn(this, env)
            if not result:
                unknown = True
            elif result[0] is decisive:
                return result
        return [] if unknown else [not decisive]

    return short_circuit


def _member_in(name: str, texts: frozenset[str], chain: Fn) -> Fn:
    """``name = 'a' or name = 'b'``: a set lookup when the element holds one string."""

    def member_in(this: list[Any], env: Env) -> list[Any]:
        if len(this) == 1:
            item = this[0]
            if item.__class__ is dict:
                value = item.get(name)
                if value.__class__ is str:
                    return [value in texts]
        return chain(this, env)

    return member_in


_BINARY = {
    "!=": lambda op, a, b: ops.not_equal(a, b),
    "~": lambda op, a, b: ops.equivalent(a, b),
    "!~": lambda op, a, b: ops.not_equivalent(a, b),
    "<": ops.compare, ">": ops.compare, "<=": ops.compare, ">=": ops.compare,
    "+": ops.arithmetic, "-": ops.arithmetic, "*": ops.arithmetic, "/": ops.arithmetic,
    "div": ops.arithmetic, "mod": ops.arithmetic, "&": ops.arithmetic,
    "xor": ops.logic, "implies": ops.logic,
    "in": lambda op, a, b: ops.membership(a, b, op),
    "contains": lambda op, a, b: ops.membership(b, a, op),
}


def _arithmetic_type(left: str | None, right: str | None, op: str) -> str | None:
    if op == "&":
        return "string"
    if op == "/":
        return "decimal"
    return left if left == right else None


def _static_type_of_key(name: str) -> str | None:
    """``performedDateTime`` -> ``dateTime``: a choice key names its type."""
    for i in range(1, len(name)):
        if name[i].isupper() and name[:i] in CHOICE_BASES:
            kind = suffix_type(name[i:])
            if kind in CHOICE_TYPES:
                return kind
    return None


def _python_type(value: Any) -> str | None:
    if value.__class__ is bool:
        return "boolean"
    if value.__class__ is int:
        return "integer"
    if value.__class__ is float:
        return "decimal"
    return None
