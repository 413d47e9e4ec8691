"""Code behind ``derive:`` in mapping files: what a declaration cannot express."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mappings import prom_hook  # noqa: F401  registers prom_score (it lives beside the PROM code)
from mappings.convert import SiteContext
from mappings.engine import register_hook
from registry_types.issues import Issue


@register_hook("patient_deceased")
def patient_deceased(resource: Mapping[str, Any], row: dict[str, Any], ctx: SiteContext) -> list[Issue]:
    # deceasedDateTime implies deceased; FHIR sends one or the other, never both. Only a real
    # true counts (the mapping converts the flag): bool("false") would declare a patient dead.
    row["deceased"] = row.get("deceased") is True or row.get("deceased_date") is not None
    return []
