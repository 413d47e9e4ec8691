"""Tokenizer for FHIRPath (N1 grammar subset used by SQL-on-FHIR and registry mappings)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from mappings.fhirpath.errors import FHIRPathSyntaxError


class Kind(Enum):
    IDENT = "identifier"  # plain or `delimited`; keywords are IDENT too, the parser decides
    STRING = "string"
    NUMBER = "number"
    DATETIME = "date/time literal"
    EXTERNAL = "%constant"
    VARIABLE = "$variable"
    OP = "operator"
    EOF = "end of expression"


@dataclass(frozen=True, slots=True)
class Token:
    kind: Kind
    text: str  # operator text, identifier name, decoded string, number text, ...
    pos: int
    delimited: bool = False  # `identifier` in backticks: never a keyword


# Longest operators first so "<=" wins over "<".
_OPERATORS = ("<=", ">=", "!=", "!~", ".", "[", "]", "(", ")", "{", "}", ",", "+", "-", "*",
              "/", "&", "|", "=", "~", "<", ">")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?")
# @2020, @2020-01-01T10:00:00.000+01:00, @2020-01-01T (dateTime, day precision), @T10:00
_CLOCK = r"[0-9]{2}(:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?)?"
_DATETIME = re.compile(
    rf"@(T{_CLOCK}|[0-9]{{4}}(-[0-9]{{2}}(-[0-9]{{2}})?)?(T({_CLOCK})?(Z|[+-][0-9]{{2}}:[0-9]{{2}})?)?)"
)
_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n",
            "r": "\r", "t": "\t"}


def tokenize(expr: str) -> list[Token]:
    """Split ``expr`` into tokens; raises FHIRPathSyntaxError with the offending position."""
    tokens: list[Token] = []
    i, n = 0, len(expr)
    while i < n:
        ch = expr[i]
        if ch in " \t\r\n":
            i += 1
            continue
        if expr.startswith("//", i):  # line comment
            end = expr.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if expr.startswith("/*", i):
            end = expr.find("*/", i + 2)
            if end < 0:
                raise FHIRPathSyntaxError("unterminated comment", expr, i)
            i = end + 2
            continue
        if ch == "'" or ch == "`":
            text, j = _quoted(expr, i, ch)
            kind = Kind.STRING if ch == "'" else Kind.IDENT
            tokens.append(Token(kind, text, i, delimited=ch == "`"))
            i = j
            continue
        if ch == "%":
            if i + 1 < n and expr[i + 1] in "'`":
                text, j = _quoted(expr, i + 1, expr[i + 1])
            else:
                m = _IDENT.match(expr, i + 1)
                if not m:
                    raise FHIRPathSyntaxError("expected a constant name after '%'", expr, i)
                text, j = m.group(), m.end()
            tokens.append(Token(Kind.EXTERNAL, text, i))
            i = j
            continue
        if ch == "$":
            m = _IDENT.match(expr, i + 1)
            if not m:
                raise FHIRPathSyntaxError("expected a variable name after '$'", expr, i)
            tokens.append(Token(Kind.VARIABLE, m.group(), i))
            i = m.end()
            continue
        if ch == "@":
            m = _DATETIME.match(expr, i)
            if not m:
                raise FHIRPathSyntaxError("malformed date/time literal", expr, i)
            tokens.append(Token(Kind.DATETIME, m.group()[1:], i))
            i = m.end()
            continue
        if ch.isdigit():
            m = _NUMBER.match(expr, i)
            assert m is not None  # a digit always matches
            tokens.append(Token(Kind.NUMBER, m.group(), i))
            i = m.end()
            continue
        m = _IDENT.match(expr, i)
        if m:
            tokens.append(Token(Kind.IDENT, m.group(), i))
            i = m.end()
            continue
        for op in _OPERATORS:
            if expr.startswith(op, i):
                tokens.append(Token(Kind.OP, op, i))
                i += len(op)
                break
        else:
            raise FHIRPathSyntaxError(f"unexpected character {ch!r}", expr, i)
    tokens.append(Token(Kind.EOF, "", n))
    return tokens


def _quoted(expr: str, start: int, quote: str) -> tuple[str, int]:
    """Decode a quoted string or delimited identifier starting at ``start``."""
    out: list[str] = []
    i, n = start + 1, len(expr)
    while i < n:
        ch = expr[i]
        if ch == quote:
            return "".join(out), i + 1
        if ch == "\\":
            if i + 1 >= n:
                break
            esc = expr[i + 1]
            if esc == "u":
                digits = expr[i + 2 : i + 6]
                if len(digits) != 4 or not all(c in "0123456789abcdefABCDEF" for c in digits):
                    raise FHIRPathSyntaxError("malformed \\u escape", expr, i)
                out.append(chr(int(digits, 16)))
                i += 6
                continue
            if esc not in _ESCAPES:
                raise FHIRPathSyntaxError(f"unknown escape \\{esc}", expr, i)
            out.append(_ESCAPES[esc])
            i += 2
            continue
        out.append(ch)
        i += 1
    raise FHIRPathSyntaxError("unterminated quoted text", expr, start)
