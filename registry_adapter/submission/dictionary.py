"""The submission data dictionary (``data_dictionary.yaml``) and validation against it."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from mappings.codemaps import CodeMap

DICTIONARY = Path(__file__).with_name("data_dictionary.yaml")
TYPES = ("string", "integer", "decimal", "date", "boolean", "code")
_INTEGER = re.compile(r"-?\d+")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str
    required: bool
    source: str
    allowed: tuple[str, ...] | None = None
    allowed_from: str | None = None


@dataclass(frozen=True)
class DataDictionary:
    version: str
    files: dict[str, tuple[FieldSpec, ...]]

    def columns(self, file: str) -> list[str]:
        return [f.name for f in self.files[file]]

    def required(self, file: str) -> list[str]:
        return [f.name for f in self.files[file] if f.required]


@lru_cache(maxsize=4)
def load_dictionary(path: Path = DICTIONARY) -> DataDictionary:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    files: dict[str, tuple[FieldSpec, ...]] = {}
    for name, spec in data["files"].items():
        fields = []
        for raw in spec["fields"]:
            if raw["type"] not in TYPES:
                raise ValueError(f"{path}: {name} field {raw['name']}: unknown type {raw['type']!r}")
            allowed = raw.get("allowed")
            fields.append(
                FieldSpec(
                    name=raw["name"],
                    type=raw["type"],
                    required=bool(raw["required"]),
                    source=str(raw["source"]),
                    allowed=tuple(str(a) for a in allowed) if allowed else None,
                    allowed_from=raw.get("allowed_from"),
                )
            )
        files[name] = tuple(fields)
    return DataDictionary(version=str(data["version"]), files=files)


def allowed_values(spec: FieldSpec, codemaps: Mapping[str, CodeMap]) -> tuple[str, ...] | None:
    if spec.allowed is not None:
        return spec.allowed
    if spec.allowed_from:
        cmap_name, column = spec.allowed_from.rsplit(".", 1)
        values = codemaps[cmap_name].value_columns.get(column)
        return tuple(str(v) for v in values) if isinstance(values, list) else None
    return None


def check_dictionary(dictionary: DataDictionary, codemaps: Mapping[str, CodeMap]) -> list[str]:
    """Fields whose ``allowed_from`` names a code map or column that is not there."""
    problems = []
    for file, specs in dictionary.files.items():
        for spec in specs:
            if not spec.allowed_from:
                continue
            cmap_name, column = spec.allowed_from.rsplit(".", 1)
            cmap = codemaps.get(cmap_name)
            if cmap is None or not isinstance(cmap.value_columns.get(column), list):
                problems.append(
                    f"{DICTIONARY}: {file} field {spec.name} takes its values from {spec.allowed_from},"
                    " which is not a code map column with a list of values"
                )
    return problems


def value_problem(spec: FieldSpec, value: str, codemaps: Mapping[str, CodeMap]) -> str | None:
    """Why ``value`` does not fit the field, or None."""
    if value == "":
        return "required, empty" if spec.required else None
    if spec.type == "integer" and not _INTEGER.fullmatch(value):
        return f"not an integer: {value!r}"
    if spec.type == "decimal":
        try:
            Decimal(value)
        except InvalidOperation:
            return f"not a decimal: {value!r}"
    if spec.type == "date":
        try:
            if not _DATE.fullmatch(value):
                raise ValueError
            date.fromisoformat(value)
        except ValueError:
            return f"not a YYYY-MM-DD date: {value!r}"
    if spec.type == "boolean" and value not in ("true", "false"):
        return f"not true/false: {value!r}"
    allowed = allowed_values(spec, codemaps)
    if spec.type == "code" and allowed is not None and value not in allowed:
        return f"{value!r} is not one of the allowed values"
    return None


def validate_csv(
    dictionary: DataDictionary, file: str, content: str | bytes, codemaps: Mapping[str, CodeMap]
) -> list[str]:
    """Every way ``content`` departs from the dictionary's ``file`` (header and each value)."""
    if file not in dictionary.files:
        return [f"{file}: not in the data dictionary"]
    text = content.decode("utf-8") if isinstance(content, bytes) else content
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    problems: list[str] = []
    if header != dictionary.columns(file):
        return [f"{file}: header {header} is not {dictionary.columns(file)}"]
    specs = dictionary.files[file]
    for line, row in enumerate(reader, start=2):
        if len(row) != len(specs):
            problems.append(f"{file}:{line}: {len(row)} values, expected {len(specs)}")
            continue
        for spec, value in zip(specs, row, strict=True):
            why = value_problem(spec, value, codemaps)
            if why:
                problems.append(f"{file}:{line}: {spec.name}: {why}")
    return problems


def as_csv(value: Any) -> str:
    """A Python value in the dictionary's text form."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, date):
        return value.isoformat()
    return str(value)
