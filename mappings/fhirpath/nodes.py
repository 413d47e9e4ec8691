"""Syntax tree of a FHIRPath expression (what the parser produces, what the compiler reads).

A path ``a.b.where(x)`` is a chain: ``Call('where', [..], base=Member('b', base=Member('a')))``.
``base=None`` means the step applies to the expression's input (``$this``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Node:
    pos: int


@dataclass(frozen=True, slots=True)
class Literal(Node):
    """A literal value; ``type_name`` is its FHIR/System type (string, integer, date, ...)."""

    value: Any
    type_name: str


@dataclass(frozen=True, slots=True)
class EmptyLiteral(Node):
    """``{}``."""


@dataclass(frozen=True, slots=True)
class Member(Node):
    name: str
    base: Node | None = None


@dataclass(frozen=True, slots=True)
class Call(Node):
    name: str
    args: tuple[Node, ...] = ()
    base: Node | None = None


@dataclass(frozen=True, slots=True)
class TypeSpecifier(Node):
    """A type name as used by ofType()/is/as: ``Coding``, ``FHIR.Coding``, ``System.String``."""

    name: str


@dataclass(frozen=True, slots=True)
class Indexer(Node):
    base: Node
    index: Node


@dataclass(frozen=True, slots=True)
class Variable(Node):
    """``$this``, ``$index``, ``$total``."""

    name: str


@dataclass(frozen=True, slots=True)
class External(Node):
    """``%name``: a view constant, a reserved variable (``%resource``) or ``%rowIndex``."""

    name: str


@dataclass(frozen=True, slots=True)
class Unary(Node):
    op: str
    operand: Node


@dataclass(frozen=True, slots=True)
class Binary(Node):
    op: str
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class TypeOp(Node):
    """``x is T`` / ``x as T``."""

    op: str
    operand: Node
    type_name: str = field(default="")
