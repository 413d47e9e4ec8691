"""Checks the v2 mapping files as ``registry-adapter mappings check`` does for FHIR mappings.

Loading (``config.load_config``) already refuses a file that is not YAML, a missing key or an
unknown table. This goes further, so a typo is found before a message needs it instead of
becoming a ``mapping.internal_error`` on every message at 3 a.m.: every field path parses,
every converter exists, every ``ref`` names a mapping, every ``when`` names a table, and every
message type names mappings that exist. Messages name the file (with its folder) and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapters.hl7v2.config import HL7Config, MappingConfigError, current_directory, load_config
from adapters.hl7v2.convert import alternatives, field_path
from adapters.hl7v2.datatypes import CONVERTERS

# Element kinds ``convert._apply_rule`` handles itself rather than through ``CONVERTERS``.
_SPECIAL_KINDS = frozenset({"obx_value", "performed", "qr_items"})


def check_directory(directory: Path | None = None) -> tuple[list[str], dict[str, int]]:
    """Problems in the v2 mapping folder (default: the one in use) and what was checked."""
    d = directory or current_directory()
    try:
        cfg = load_config(d)
    except MappingConfigError as exc:
        # Its message starts with the file name; the folder tells which copy is wrong.
        return [f"{d}/{exc}"], {"v2 message types": 0, "v2 resource mappings": 0}
    problems = [f"{d}/{p}" for p in _problems(cfg)]
    return problems, {"v2 message types": len(cfg.messages), "v2 resource mappings": len(cfg.resources)}


def _problems(cfg: HL7Config) -> list[str]:
    problems: list[str] = []
    for name, spec in cfg.resources.items():
        at = f"resources.yaml: resources.{name}"
        for key in ("id", "id_fallback"):
            for i, expr in enumerate(spec.get(key) or []):
                problems += _paths(str(expr), f"{at}.{key}[{i}]", cfg, allow_ids=True)
        for key in ("when", "delete_when"):
            if spec.get(key) is not None:
                problems += _condition(spec[key], f"{at}.{key}", cfg)
        for i, rule in enumerate(spec["elements"]):
            problems += _element(rule, f"{at}.elements[{i}]", cfg)
    for msg_type, message in cfg.messages.items():
        at = f"messages.yaml: messages.{msg_type}"
        for name in (message.resources or ()) + tuple(message.overrides):
            if name not in cfg.resources:
                problems.append(f"{at}: {name!r} is not a mapping in resources.yaml")
    return problems


def _element(rule: dict[str, Any], at: str, cfg: HL7Config) -> list[str]:
    problems: list[str] = []
    if "ref" in rule and rule["ref"] not in cfg.resources:
        problems.append(f"{at}: ref {rule['ref']!r} is not a mapping in resources.yaml")
    if rule.get("when") is not None:
        problems += _condition(rule["when"], f"{at}.when", cfg)
    if "status_when" in rule:
        cond = rule["status_when"]
        if not isinstance(cond, dict) or not {"field", "present", "absent"} <= set(cond):
            problems.append(f"{at}.status_when needs field, present and absent")
        else:
            problems += _paths(str(cond["field"]), f"{at}.status_when.field", cfg)
    if any(k in rule for k in ("fixed", "ref", "status_when")):
        return problems
    kind = rule.get("as")
    if kind not in CONVERTERS and kind not in _SPECIAL_KINDS:
        known = ", ".join(sorted({*CONVERTERS, *_SPECIAL_KINDS}))
        problems.append(f"{at}: unknown converter as: {kind!r} (known: {known})")
    if kind != "qr_items":
        if "from" not in rule:
            problems.append(f"{at}: needs from: (a field path)")
        else:
            problems += _paths(str(rule["from"]), f"{at}.from", cfg)
    for key in ("text_from", "minutes_from"):
        if rule.get(key):
            problems += _paths(str(rule[key]), f"{at}.{key}", cfg)
    return problems


def _condition(cond: Any, at: str, cfg: HL7Config) -> list[str]:
    if not isinstance(cond, dict):
        return [f"{at} must be a mapping"]
    if "any" in cond:
        return [p for i, c in enumerate(cond["any"] or []) for p in _condition(c, f"{at}.any[{i}]", cfg)]
    if "field" not in cond:
        return [f"{at} needs a field"]
    problems = _paths(str(cond["field"]), f"{at}.field", cfg)
    for key in ("in_table", "not_in_table"):
        if key in cond and cond[key] not in cfg.tables:
            problems.append(f"{at}.{key}: {cond[key]!r} is not a table in code_systems.yaml")
    if "later_than" in cond:
        problems += _paths(str(cond["later_than"]), f"{at}.later_than", cfg)
    if not {"in_table", "not_in_table", "equals", "present", "later_than"} & set(cond):
        problems.append(f"{at} needs in_table, not_in_table, equals, present or later_than")
    return problems


def _paths(expr: str, at: str, cfg: HL7Config, *, allow_ids: bool = False) -> list[str]:
    problems: list[str] = []
    for alt in alternatives(expr):
        for part in alt:
            if part.startswith("@"):
                if not allow_ids:
                    problems.append(f"{at}: {part!r} (a resource id) is only allowed in id keys")
                elif part[1:] not in cfg.resources:
                    problems.append(f"{at}: {part!r} is not a mapping in resources.yaml")
                continue
            try:
                field_path(part)
            except ValueError:
                problems.append(f"{at}: {part!r} is not a field path (SEG-F[(C=VALUE)][.C[.S]])")
    return problems
