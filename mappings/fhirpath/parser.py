"""Pratt parser for FHIRPath.

Chosen over reusing fhirpathpy's ANTLR grammar because that parser is wired to a no-op error
listener: it silently accepts broken input (``name.where(``, ``a b``, ``1 +``) and reports no
positions, and a mapping engine must reject a bad expression when the mapping is loaded.
Precedence follows the FHIRPath N1 specification, tightest first:
``.``/``[]``, unary ``+ -``, ``* / div mod``, ``+ - &``, ``is as``, ``|``, ``< > <= >=``,
``= ~ != !~``, ``in contains``, ``and``, ``xor or``, ``implies``.
"""

from __future__ import annotations

import re

from mappings.fhirpath.errors import FHIRPathSyntaxError
from mappings.fhirpath.lexer import Kind, Token, tokenize
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

# Left binding powers of infix operators (keywords included; ``is``/``as`` handled apart).
_INFIX: dict[str, int] = {
    "implies": 10,
    "or": 20, "xor": 20,
    "and": 30,
    "in": 40, "contains": 40,
    "=": 50, "~": 50, "!=": 50, "!~": 50,
    "<": 60, ">": 60, "<=": 60, ">=": 60,
    "|": 70,
    "is": 80, "as": 80,
    "+": 90, "-": 90, "&": 90,
    "*": 100, "/": 100, "div": 100, "mod": 100,
}
_UNARY_BP = 110
_POSTFIX_BP = 120  # "." and "["
_KEYWORD_OPS = frozenset(k for k in _INFIX if k.isalpha())
# Keywords the grammar never accepts as a name (``in``/``contains``/``is``/``as`` it does).
_NOT_A_NAME = frozenset({"and", "or", "xor", "implies", "div", "mod"})
_FUNCTIONS_TAKING_TYPES = frozenset({"ofType", "is", "as", "getReferenceKey"})
_DATE = re.compile(r"[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?$")
_DATETIME = re.compile(
    r"[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?T([0-9]{2}(:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?)?)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?$"
)
_TIME = re.compile(r"T[0-9]{2}(:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?)?$")


def parse(expr: str) -> Node:
    """Parse ``expr`` into a syntax tree; raises FHIRPathSyntaxError with a position."""
    if not isinstance(expr, str) or not expr.strip():
        raise FHIRPathSyntaxError("empty expression", str(expr))
    return _Parser(expr).parse_all()


class _Parser:
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.tokens = tokenize(expr)
        self.i = 0

    # -- token helpers -------------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def error(self, reason: str, tok: Token | None = None) -> FHIRPathSyntaxError:
        tok = tok or self.tok
        return FHIRPathSyntaxError(reason, self.expr, tok.pos)

    def expect_op(self, op: str) -> Token:
        if self.tok.kind is not Kind.OP or self.tok.text != op:
            raise self.error(f"expected '{op}', found {self._describe(self.tok)}")
        return self.advance()

    @staticmethod
    def _describe(tok: Token) -> str:
        return "end of expression" if tok.kind is Kind.EOF else repr(tok.text)

    def _infix_op(self, tok: Token) -> str | None:
        if tok.kind is Kind.OP and tok.text in _INFIX:
            return tok.text
        if tok.kind is Kind.IDENT and not tok.delimited and tok.text in _KEYWORD_OPS:
            return tok.text
        return None

    # -- grammar -------------------------------------------------------------------------
    def parse_all(self) -> Node:
        node = self.expression(0)
        if self.tok.kind is not Kind.EOF:
            raise self.error(f"unexpected {self._describe(self.tok)}")
        return node

    def expression(self, rbp: int) -> Node:
        left = self.prefix()
        while True:
            tok = self.tok
            if tok.kind is Kind.OP and tok.text in (".", "["):
                left = self.postfix(left)
                continue
            op = self._infix_op(tok)
            if op is None or _INFIX[op] <= rbp:
                return left
            self.advance()
            if op in ("is", "as"):
                left = TypeOp(tok.pos, op, left, self.type_name())
            else:
                left = Binary(tok.pos, op, left, self.expression(_INFIX[op]))

    def postfix(self, base: Node) -> Node:
        tok = self.advance()
        if tok.text == "[":
            index = self.expression(0)
            self.expect_op("]")
            return Indexer(tok.pos, base, index)
        return self.invocation(base)

    def prefix(self) -> Node:
        tok = self.tok
        kind = tok.kind
        if kind is Kind.OP:
            if tok.text in ("+", "-"):
                self.advance()
                return Unary(tok.pos, tok.text, self.expression(_UNARY_BP))
            if tok.text == "(":
                self.advance()
                inner = self.expression(0)
                self.expect_op(")")
                return inner
            if tok.text == "{":
                self.advance()
                self.expect_op("}")
                return EmptyLiteral(tok.pos)
            raise self.error(f"unexpected {self._describe(tok)}")
        if kind is Kind.STRING:
            self.advance()
            return Literal(tok.pos, tok.text, "string")
        if kind is Kind.NUMBER:
            self.advance()
            self._reject_quantity(tok)
            if "." in tok.text:
                return Literal(tok.pos, float(tok.text), "decimal")
            return Literal(tok.pos, int(tok.text), "integer")
        if kind is Kind.DATETIME:
            self.advance()
            return self.datetime_literal(tok)
        if kind is Kind.EXTERNAL:
            self.advance()
            return External(tok.pos, tok.text)
        if kind is Kind.VARIABLE:
            self.advance()
            if tok.text not in ("this", "index", "total"):
                raise self.error(f"unknown variable ${tok.text}", tok)
            return Variable(tok.pos, tok.text)
        if kind is Kind.IDENT:
            if not tok.delimited and tok.text in ("true", "false"):
                self.advance()
                return Literal(tok.pos, tok.text == "true", "boolean")
            if not tok.delimited and tok.text in _NOT_A_NAME:
                raise self.error(f"unexpected operator {tok.text!r}")
            return self.invocation(None)
        raise self.error(f"unexpected {self._describe(tok)}")

    def invocation(self, base: Node | None) -> Node:
        tok = self.tok
        if tok.kind is Kind.VARIABLE and base is not None:
            raise self.error(f"${tok.text} cannot follow '.'")
        if tok.kind is not Kind.IDENT:
            raise self.error(f"expected a name, found {self._describe(tok)}")
        self.advance()
        nxt = self.tok
        if nxt.kind is Kind.OP and nxt.text == "(":
            self.advance()
            args = self.arguments(tok.text)
            return Call(tok.pos, tok.text, tuple(args), base)
        return Member(tok.pos, tok.text, base)

    def arguments(self, function: str) -> list[Node]:
        args: list[Node] = []
        if self.tok.kind is Kind.OP and self.tok.text == ")":
            self.advance()
            return args
        while True:
            if function in _FUNCTIONS_TAKING_TYPES and self._looks_like_type():
                start = self.tok
                args.append(TypeSpecifier(start.pos, self.type_name()))
            else:
                args.append(self.expression(0))
            if self.tok.kind is Kind.OP and self.tok.text == ",":
                self.advance()
                continue
            self.expect_op(")")
            return args

    def _looks_like_type(self) -> bool:
        """A bare (possibly qualified) name followed by ')' or ',' is a type specifier."""
        j = self.i
        if self.tokens[j].kind is not Kind.IDENT:
            return False
        j += 1
        while (self.tokens[j].kind is Kind.OP and self.tokens[j].text == "."
               and self.tokens[j + 1].kind is Kind.IDENT):
            j += 2
        end = self.tokens[j]
        return end.kind is Kind.OP and end.text in (")", ",")

    def type_name(self) -> str:
        tok = self.tok
        if tok.kind is not Kind.IDENT:
            raise self.error(f"expected a type name, found {self._describe(tok)}")
        parts = [self.advance().text]
        while (self.tok.kind is Kind.OP and self.tok.text == "."
               and self.tokens[self.i + 1].kind is Kind.IDENT):
            self.advance()
            parts.append(self.advance().text)
        return ".".join(parts)

    def datetime_literal(self, tok: Token) -> Literal:
        text = tok.text
        if _TIME.match(text):
            return Literal(tok.pos, text[1:], "time")
        if _DATE.match(text):
            return Literal(tok.pos, text, "date")
        if _DATETIME.match(text):
            # "@2020-01-01T" is the spec's way to write a dateTime with date precision.
            return Literal(tok.pos, text.rstrip("T"), "dateTime")
        raise self.error("malformed date/time literal", tok)

    def _reject_quantity(self, number: Token) -> None:
        nxt = self.tok
        if nxt.kind is Kind.STRING or (
            nxt.kind is Kind.IDENT and not nxt.delimited and nxt.text not in _KEYWORD_OPS
        ):
            raise self.error("quantity literals are not supported", number)
