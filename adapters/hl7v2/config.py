"""Loads the HL7 v2 mapping data in mappings/hl7v2/ (messages, code tables, resource mappings).

The YAML is data registry staff may edit, so it is checked here on load and a mistake is
reported naming the file and key rather than surfacing later as a KeyError mid-conversion.

A site replaces the bundled folder the way it replaces the FHIR mappings: a ``hl7v2/`` folder
inside its ``mappings.directory`` (``site_directory``), made the process default with
``use_directory`` by whoever builds the application; ``load_config()`` then reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

MAPPINGS_DIR = Path(__file__).resolve().parents[2] / "mappings" / "hl7v2"
SITE_SUBFOLDER = "hl7v2"
FILES = ("messages.yaml", "code_systems.yaml", "resources.yaml")

# The folder ``load_config()`` reads when given none: the site's, once ``use_directory`` ran.
_default_directory: Path | None = None


class MappingConfigError(ValueError):
    """The YAML in mappings/hl7v2/ is not what the converter expects."""


@dataclass(frozen=True, slots=True)
class MessageRule:
    required: tuple[str, ...] = ()
    resources: tuple[str, ...] | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    delete: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HL7Config:
    versions: tuple[str, ...]
    field_separators: str
    max_repetitions: int
    strict_check: bool
    hl7apy_parse: bool
    charsets: dict[str, str]
    messages: dict[str, MessageRule]
    tables: dict[str, dict[str, Any]]
    resources: dict[str, dict[str, Any]]
    directory: Path

    # Segments any resource mapping reads: only these are split by the parser. Derived from
    # ``resources`` once (not per message: it walks every element rule).
    segments_used: frozenset[str] = field(init=False, default=frozenset())

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments_used", _segments_used(self.resources))


def _segments_used(resources: dict[str, dict[str, Any]]) -> frozenset[str]:
    used: set[str] = {"MSH"}
    for spec in resources.values():
        used.add(spec["segment"])
        for rule in spec.get("elements", []):
            for key in ("from", "text_from", "minutes_from"):
                for alt in str(rule.get(key, "")).split("|"):
                    alt = alt.strip()
                    if len(alt) >= 3 and alt[:3].isalnum():
                        used.add(alt[:3])
        for key in spec.get("id", []) + spec.get("id_fallback", []):
            for alt in str(key).replace("+", "|").split("|"):
                alt = alt.strip()
                if alt and not alt.startswith("@"):
                    used.add(alt[:3])
    return frozenset(used)


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise MappingConfigError(f"{path.name}: cannot read ({exc})") from exc
    if not isinstance(data, dict):
        raise MappingConfigError(f"{path.name}: top level must be a mapping")
    return data


def _require(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in data:
        raise MappingConfigError(f"{where}: missing key {key!r}")
    value = data[key]
    if not isinstance(value, kind):
        raise MappingConfigError(f"{where}: {key!r} must be a {kind.__name__}")
    return value


def _message_rules(raw: dict[str, Any], where: str) -> dict[str, MessageRule]:
    rules: dict[str, MessageRule] = {}
    for msg_type, spec in raw.items():
        spec = spec or {}
        if "^" not in msg_type or not isinstance(spec, dict):
            raise MappingConfigError(f"{where}: messages.{msg_type} must be CODE^EVENT: {{...}}")
        unknown = set(spec) - {"required", "resources", "overrides", "delete"}
        if unknown:
            raise MappingConfigError(f"{where}: messages.{msg_type}: unknown keys {sorted(unknown)}")
        resources = spec.get("resources")
        rules[msg_type] = MessageRule(
            required=tuple(spec.get("required", ())),
            resources=tuple(resources) if resources is not None else None,
            overrides=dict(spec.get("overrides", {})),
            delete=tuple(spec.get("delete", ())),
        )
    return rules


def _check_resources(resources: dict[str, Any], tables: dict[str, Any], where: str) -> None:
    allowed = {
        "segment", "occurs", "id", "id_fallback", "elements", "delete_when", "messages",
        "resourceType", "when", "id_name",
    }
    for name, spec in resources.items():
        at = f"{where}: resources.{name}"
        if not isinstance(spec, dict):
            raise MappingConfigError(f"{at} must be a mapping")
        unknown = set(spec) - allowed
        if unknown:
            raise MappingConfigError(f"{at}: unknown keys {sorted(unknown)}")
        _require(spec, "segment", str, at)
        _require(spec, "id", list, at)
        if spec.get("occurs", "each") not in ("each", "first"):
            raise MappingConfigError(f"{at}.occurs must be 'each' or 'first'")
        for i, rule in enumerate(_require(spec, "elements", list, at)):
            if not isinstance(rule, dict) or "path" not in rule:
                raise MappingConfigError(f"{at}.elements[{i}] needs a 'path'")
            table = rule.get("table")
            if table is not None and table not in tables:
                raise MappingConfigError(f"{at}.elements[{i}]: unknown table {table!r}")


def site_directory(mappings_directory: Path | None) -> Path | None:
    """The site's v2 mapping folder: ``<mappings.directory>/hl7v2`` when the site has one.

    None (the bundled folder) when the site keeps the bundled mappings or its folder has no
    ``hl7v2/``: a site that only replaced its FHIR mappings still converts v2 messages.
    """
    if mappings_directory is None:
        return None
    candidate = mappings_directory / SITE_SUBFOLDER
    return candidate if candidate.is_dir() else None


def use_directory(directory: Path | None) -> None:
    """Make ``directory`` (None: the bundled one) what ``load_config()`` reads from now on.

    Process-wide because the header check, the listener and conversion all load the config
    deep inside calls that have no settings at hand; one process serves one site.
    """
    global _default_directory
    _default_directory = directory


def current_directory() -> Path:
    return _default_directory or MAPPINGS_DIR


def load_config(directory: Path | None = None) -> HL7Config:
    """Load and check messages.yaml, code_systems.yaml and resources.yaml (cached).

    Without ``directory``: the folder set with ``use_directory``, else the bundled one.
    """
    return _load_config(directory or current_directory())


def forget_loaded() -> None:
    """Drop the loaded files so the next ``load_config`` reads them again (a long-lived
    process reloading mappings staff edited)."""
    _load_config.cache_clear()


@lru_cache(maxsize=8)
def _load_config(d: Path) -> HL7Config:
    messages = _load_yaml(d / "messages.yaml")
    codes = _load_yaml(d / "code_systems.yaml")
    res = _load_yaml(d / "resources.yaml")
    tables: dict[str, dict[str, Any]] = {}
    for name, table in codes.items():
        if not isinstance(table, dict):
            raise MappingConfigError(f"code_systems.yaml: {name} must be a mapping")
        tables[name] = {str(k).strip().upper(): v for k, v in table.items()}
    resources = _require(res, "resources", dict, "resources.yaml")
    _check_resources(resources, tables, "resources.yaml")
    charsets = {
        str(k).strip().upper(): str(v)
        for k, v in _require(messages, "charsets", dict, "messages.yaml").items()
    }
    return HL7Config(
        versions=tuple(str(v) for v in _require(messages, "versions", list, "messages.yaml")),
        field_separators=str(messages.get("field_separators", "|")),
        max_repetitions=int(messages.get("max_repetitions", 100)),
        strict_check=bool(messages.get("strict_check", False)),
        hl7apy_parse=bool(messages.get("hl7apy_parse", False)),
        charsets=charsets,
        messages=_message_rules(
            _require(messages, "messages", dict, "messages.yaml"), "messages.yaml"
        ),
        tables=tables,
        resources=resources,
        directory=d,
    )
