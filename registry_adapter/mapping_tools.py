"""Tools for people who edit mappings: check every file, try one mapping on one resource."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from mappings.codemaps import BUNDLED as BUNDLED_CODEMAPS
from mappings.codemaps import CodeMap, CodeMapError, load_codemap
from mappings.engine import BUNDLED as BUNDLED_VIEWS
from mappings.engine import MappingFileError, RegistryMapping, load_spec
from registry_adapter.app import App, target_columns


def check_all(app: App) -> tuple[list[str], dict[str, int]]:
    """Validate every code map, mapping file and PROM instrument; collect all problems."""
    problems: list[str] = []
    codemaps: dict[str, CodeMap] = {}
    folders = [BUNDLED_CODEMAPS, app.settings.mappings.codemaps]
    for folder in folders:
        for manifest in sorted(folder.glob("*.yaml")) if folder else []:
            try:
                cmap = load_codemap(manifest)
            except CodeMapError as exc:
                problems.append(str(exc))
                continue
            codemaps[cmap.name] = cmap
    import mappings.hooks  # noqa: F401  (derive hooks must be registered to be checked)

    views = app.settings.mappings.directory or BUNDLED_VIEWS
    seen: dict[str, str] = {}
    n_views = 0
    for path in sorted(views.glob("*.yaml")):
        try:
            mapping = RegistryMapping(load_spec(path), codemaps, str(path), target_columns())
        except MappingFileError as exc:
            problems.append(str(exc))
            continue
        n_views += 1
        if mapping.resource_type in seen:
            problems.append(
                f"{path}: a second mapping for {mapping.resource_type} (first: {seen[mapping.resource_type]})"
            )
        seen[mapping.resource_type] = str(path)
    n_instruments = 0
    try:
        n_instruments = len(app.instruments)
    except Exception as exc:
        problems.append(str(exc))
    counts = {
        "code maps": len(codemaps),
        "codes": sum(len(c.exact) + len(c.prefixes) + len(c.patterns) for c in codemaps.values()),
        "mappings": n_views,
        "instruments": n_instruments,
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
                "severity": i.rule or "error",
            }
            for i in result.issues
        ],
    }
