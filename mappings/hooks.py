"""Code behind ``derive:`` in mapping files: what a declaration cannot express."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mappings.convert import SiteContext
from mappings.engine import register_hook
from registry_store.errors import Issue


@register_hook("patient_deceased")
def patient_deceased(resource: Mapping[str, Any], row: dict[str, Any], ctx: SiteContext) -> list[Issue]:
    # deceasedDateTime implies deceased; FHIR sends one or the other, never both. Only a real
    # true counts (the mapping converts the flag): bool("false") would declare a patient dead.
    row["deceased"] = row.get("deceased") is True or row.get("deceased_date") is not None
    return []


@register_hook("prom_score")
def prom_score(resource: Mapping[str, Any], row: dict[str, Any], ctx: SiteContext) -> list[Issue]:
    """Recognise the instrument and score it by its published rules (mappings/instruments)."""
    registry = ctx.instruments
    if registry is None:
        return [Issue("prom.no_instruments", "no PROM instrument definitions are loaded")]
    instrument = registry.recognise(dict(resource))
    if instrument is None:
        canonical = str(resource.get("questionnaire") or "")[:200]
        return [
            Issue(
                "prom.unknown_instrument",
                f"questionnaire {canonical or '(none given)'} is not a known PROM instrument",
                field="questionnaire",
                value=canonical or None,
            )
        ]
    answers, extract_issues = instrument.extract_answers(dict(resource))
    result = instrument.score(answers)
    row["instrument"] = instrument.id
    row["answers"] = {k: v for k, v in answers.items() if v is not None}
    row["scores"] = dict(result.scores)
    row["answered"] = result.answered
    issues = []
    for si in [*extract_issues, *result.issues]:
        item = getattr(si, "item", None) or ""
        issues.append(
            Issue(
                si.code,
                f"{instrument.id}: {si.message}",
                field=f"item:{item}" if item else "",
                value=item or None,
                rule=f"prom:{instrument.id}",
                severity="warning",
            )
        )
    if all(v is None for v in result.scores.values()):
        issues.append(
            Issue(
                "prom.not_scorable",
                f"{instrument.id}: no score could be computed",
                field="item",
                value=instrument.id,
            )
        )
    return issues
