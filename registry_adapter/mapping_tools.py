"""Tools for people who edit mappings: check every file, try one mapping on one resource."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from adapters.hl7v2.check import check_directory
from mappings.codemaps import load_codemaps
from mappings.engine import MappingFileError, RegistryMapping, load_mappings, load_spec
from mappings.outcomes import OutcomeDefinitionError, check_definitions, load_definitions
from registry_adapter.app import App, target_columns
from registry_adapter.submission.dictionary import check_dictionary, load_dictionary


def check_all(app: App) -> tuple[list[str], dict[str, int]]:
    """Validate every code map, mapping file (FHIR and HL7 v2) and PROM instrument; collect
    all problems."""
    problems: list[str] = []
    codemaps = load_codemaps(app.settings.mappings.codemaps, problems=problems)
    views = load_mappings(codemaps, app.settings.mappings.directory, target_columns(), problems=problems)
    n_instruments = 0
    try:
        n_instruments = len(app.instruments)
    except Exception as exc:  # instrument loader errors name file and key
        problems.append(str(exc))
    # The v2 files this site's conversion reads (its own hl7v2/ folder, else the bundled one).
    # The folder build_app chose for this site (its own hl7v2/, else the bundled one).
    v2_problems, v2_counts = check_directory()
    problems += v2_problems
    # Outcome definitions (windows, the comorbidity and complication code maps and their sources).
    try:
        problems += check_definitions(load_definitions(app.settings.mappings.directory), codemaps)
    except OutcomeDefinitionError as exc:
        problems.append(str(exc))
    # The submission's data dictionary takes some allowed values from code maps: a site's
    # replacement code map must still have those columns.
    problems += check_dictionary(load_dictionary(), codemaps)
    counts = {
        "code maps": len(codemaps),
        "codes": sum(len(c.exact) + len(c.prefixes) + len(c.patterns) for c in codemaps.values()),
        "mappings": len(views),
        "instruments": n_instruments,
        **v2_counts,
    }
    return problems, counts


def try_mapping(app: App, mapping_file: Path, resource_file: Path) -> dict[str, Any]:
    """What one mapping makes of one resource: the registry row and the issues."""
    mapping = RegistryMapping(load_spec(mapping_file), app.codemaps, str(mapping_file), target_columns())
    resource = orjson.loads(resource_file.read_bytes())
    if not isinstance(resource, Mapping) or resource.get("resourceType") != mapping.resource_type:
        raise MappingFileError(
            f"{resource_file}: expected a {mapping.resource_type} resource for {mapping_file.name}"
        )
    view_rows = mapping.view.rows(dict(resource))
    result = mapping.map(resource, app.site)
    return {
        "mapping": mapping.name,
        "view_rows": view_rows,
        "disposition": result.disposition,
        "target": result.target,
        "row": result.row,
        "issues": [
            {
                "code": i.code,
                "field": i.field,
                "value": i.value,
                "message": i.message,
                "rule": i.rule,
                "severity": i.severity,
            }
            for i in result.issues
        ],
    }
