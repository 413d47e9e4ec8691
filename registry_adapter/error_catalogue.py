"""The error catalogue: every error code in a coordinator's words (``error_catalogue.yaml``).

The words are data so they can be improved without touching the code that emits the codes;
``tests/registry_adapter/test_error_catalogue.py`` keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

CATALOGUE = Path(__file__).with_name("error_catalogue.yaml")
# Who fixes a problem, as the page says it.
FIXERS = {
    "coordinator": "the registry coordinator",
    "coder": "a clinical coder (code maps)",
    "it": "the adapter's IT administrator",
    "interface_team": "the hospital's interface team",
}
_FIELDS = ("title", "explanation", "fixes", "next_step", "reprocess")


class CatalogueError(ValueError):
    """The catalogue file is not as described at its top; the message names code and field."""


@dataclass(frozen=True)
class ErrorInfo:
    code: str
    title: str
    explanation: str
    fixes: str
    next_step: str
    reprocess: bool

    @property
    def fixer(self) -> str:
        return FIXERS[self.fixes]


def parse(data: Any, where: str = "error_catalogue.yaml") -> dict[str, ErrorInfo]:
    if not isinstance(data, dict):
        raise CatalogueError(f"{where}: expected a mapping of error codes")
    out: dict[str, ErrorInfo] = {}
    for code, entry in data.items():
        if not isinstance(entry, dict):
            raise CatalogueError(f"{where}: {code}: expected title, explanation, fixes, next_step, reprocess")
        missing = [f for f in _FIELDS if f not in entry]
        if missing:
            raise CatalogueError(f"{where}: {code}: missing {', '.join(missing)}")
        if entry["fixes"] not in FIXERS:
            raise CatalogueError(f"{where}: {code}.fixes: must be one of {', '.join(FIXERS)}")
        if not isinstance(entry["reprocess"], bool):
            raise CatalogueError(f"{where}: {code}.reprocess: must be true or false")
        out[str(code)] = ErrorInfo(
            code=str(code),
            title=str(entry["title"]),
            explanation=str(entry["explanation"]),
            fixes=str(entry["fixes"]),
            next_step=str(entry["next_step"]),
            reprocess=entry["reprocess"],
        )
    return out


@cache
def catalogue() -> dict[str, ErrorInfo]:
    return parse(yaml.safe_load(CATALOGUE.read_text(encoding="utf-8")))


def info(code: str) -> ErrorInfo | None:
    """The catalogue entry of a code; None for a code it does not know (a site's own rule)."""
    return catalogue().get(code)
