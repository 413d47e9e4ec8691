"""A problem found in one record, as feeds, mappings and case assembly report it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Issue:
    """A problem found while receiving or mapping one record.

    ``value`` is the offending code or token (a CPT code, a status) — never free text from the
    patient record — because it is shown in the review UI and used to group causes.
    """

    code: str
    message: str
    field: str = ""
    value: str | None = None
    rule: str = ""
    severity: str = "error"  # or "warning": the record still maps
