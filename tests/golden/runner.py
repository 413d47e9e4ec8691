"""Golden mapping outputs: what each shipped view and each handled v2 message type makes of a
small, reviewed input, as the pipeline would map it.

A golden case is an input file beside its expected output:

- ``views/<view>.input.ndjson`` → ``views/<view>.expected.json``: resources of the view's type,
  each with its disposition, registry row and issues (``mappings/views/<view>.yaml``);
- ``hl7v2/<TYPE>-<EVENT>.hl7`` → ``hl7v2/<TYPE>-<EVENT>.expected.json``: one v2 message, its
  conversion issues, deletions and merges, and each FHIR resource it converts into run through
  its view (``mappings/hl7v2/*.yaml`` then ``mappings/views/*.yaml``).

``tests/golden/test_golden.py`` compares; ``make golden`` (``scripts/golden.py``) rewrites the
expected files after a reviewed mapping change, so the change shows as a diff in review.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from adapters.hl7v2 import config as hl7v2_config
from adapters.hl7v2.header import HeaderCheckError, read_header
from adapters.hl7v2.records import convert_staged, message_identity
from adapters.validation import check, settle
from mappings.engine import BUNDLED as BUNDLED_VIEWS
from mappings.engine import RegistryMapping
from registry_adapter.app import App, build_app
from registry_adapter.config import parse_settings
from registry_types.issues import Issue

GOLDEN = Path(__file__).resolve().parent
VIEWS = GOLDEN / "views"
HL7V2 = GOLDEN / "hl7v2"

# Fixed site settings: outputs depend on the time zone (local dates) and the pseudonym key.
SITE = {"id": "golden-site", "timezone": "America/Chicago", "pseudonym_key": "golden-key-not-secret"}


@dataclass(frozen=True)
class GoldenCase:
    kind: str  # "view" or "hl7v2"
    name: str  # view file stem, or message type as TYPE-EVENT
    input: Path

    @property
    def expected(self) -> Path:
        return self.input.parent / f"{self.name}.expected.json"

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.name}"


def cases() -> list[GoldenCase]:
    found = [
        GoldenCase("view", p.name.removesuffix(".input.ndjson"), p) for p in VIEWS.glob("*.input.ndjson")
    ]
    found += [GoldenCase("hl7v2", p.stem, p) for p in HL7V2.glob("*.hl7")]
    return sorted(found, key=lambda c: c.id)


@cache
def golden_app() -> App:
    """The bundled mappings and code maps with the fixed site; no database is opened."""
    settings = parse_settings(
        {"site": SITE, "database": {"url": "sqlite://"}, "sources": [], "logging": {"level": "ERROR"}}
    )
    before = hl7v2_config.current_directory()
    try:
        return build_app(settings)
    finally:
        hl7v2_config.use_directory(before)  # build_app sets the process-wide v2 folder


def mapping_for_view(view: str) -> RegistryMapping:
    path = BUNDLED_VIEWS / f"{view}.yaml"
    for mapping in golden_app().mappings.values():
        if Path(mapping.origin) == path:
            return mapping
    raise LookupError(f"no loaded mapping comes from {path}")


def compute(case: GoldenCase) -> dict[str, Any]:
    if case.kind == "view":
        mapping = mapping_for_view(case.name)
        resources = [orjson.loads(line) for line in case.input.read_bytes().splitlines() if line.strip()]
        return {"view": case.name, "target": mapping.target, "records": [map_resource(r) for r in resources]}
    return convert_and_map(case.input.read_bytes(), case.name)


def map_resource(resource: Mapping[str, Any]) -> dict[str, Any]:
    """One FHIR resource as ``Pipeline._prepare_fhir`` treats it: validation, then its view."""
    app = golden_app()
    head = {"resourceType": resource.get("resourceType"), "id": resource.get("id")}
    issues: list[Issue] = []
    checked: Any = resource
    if app.settings.mappings.validation != "off":
        issues, checked = check(dict(resource))
    mapping = app.mappings.get(str(resource.get("resourceType")))
    if mapping is None:
        return {**head, "disposition": "out_of_scope", "mapping": None, "issues": _issues(issues)}
    result = mapping.map(checked, app.site)
    if result.disposition == "mapped":
        issues = settle(issues)
    return {
        **head,
        "mapping": mapping.name,
        "disposition": result.disposition,
        "row": result.row if result.disposition == "mapped" else None,
        "issues": _issues([*issues, *result.issues]),
    }


def convert_and_map(raw: bytes, name: str) -> dict[str, Any]:
    """One v2 message as the pipeline treats it: converted, then each resource mapped."""
    # The bundled v2 mapping, whatever folder an earlier test in this process pointed it at
    # (the choice is process-wide); put back afterwards for whoever set it.
    before = hl7v2_config.current_directory()
    hl7v2_config.use_directory(None)
    try:
        try:
            header = read_header(raw, versions=(), message_types=())
            identity = message_identity(header.sending_facility, header.control_id)
        except HeaderCheckError:
            identity = f"GOLDEN|{name}"  # as staged: a message without a readable MSH
        converted = convert_staged(raw, identity, golden_app().site.tz)
    finally:
        hl7v2_config.use_directory(before)
    return {
        "message": name,
        "out_of_scope": converted.out_of_scope,
        "failed": converted.failed,
        "issues": _issues(converted.issues),
        "deleted": [list(d) for d in converted.deleted],
        "merges": [list(m) for m in converted.merges],
        "records": [map_resource(r.resource) for r in converted.records],
    }


def _issues(issues: list[Issue]) -> list[dict[str, Any]]:
    return [
        {"code": i.code, "severity": i.severity, "field": i.field, "value": i.value, "rule": i.rule,
         "message": i.message}
        for i in issues
    ]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    raise TypeError(f"golden output cannot hold a {type(value).__name__}")


def render(output: Mapping[str, Any]) -> str:
    """Stable text: sorted keys, one value a line, so a change reads as a small diff."""
    return json.dumps(output, indent=2, sort_keys=True, ensure_ascii=False, default=_plain) + "\n"


def write_all() -> Iterator[tuple[GoldenCase, bool]]:
    """Rewrite every expected file; yields each case and whether its file changed."""
    for case in cases():
        text = render(compute(case))
        old = case.expected.read_text() if case.expected.exists() else None
        if old != text:
            case.expected.write_text(text)
        yield case, old != text
