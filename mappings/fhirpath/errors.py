"""Errors raised while compiling or evaluating FHIRPath.

Messages name the expression and a position, never a value taken from a resource: resources
carry patient data, expressions are mapping content written by registry staff.
"""

from __future__ import annotations


class FHIRPathError(ValueError):
    """Base class of every FHIRPath error raised by this package."""


class FHIRPathSyntaxError(FHIRPathError):
    """The expression cannot be compiled: bad syntax, unknown function, undefined constant.

    ``position`` is the 0-based character offset the problem was found at (or ``None`` when it
    concerns the expression as a whole).
    """

    def __init__(self, reason: str, expression: str, position: int | None = None) -> None:
        self.reason = reason
        self.expression = expression
        self.position = position
        where = f" at position {position}" if position is not None else ""
        super().__init__(f"{reason}{where} in FHIRPath {expression!r}")


class FHIRPathEvaluationError(FHIRPathError):
    """Evaluation failed for one input (e.g. an operator got a collection of several items).

    The message describes the rule that was broken, not the data that broke it.
    """
