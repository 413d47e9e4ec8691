"""Code maps: (system, code) → registry values, edited by registry staff as CSV.

A code map is a small YAML manifest (name, version, code systems, the value columns and their
allowed values, the *scope*) beside a CSV table of codes. Rows match a code exactly or by
prefix (ICD-10-CM families such as M48.06 cover M48.061 and M48.062). The scope lists code
ranges that belong to this map's domain: a code inside the scope but missing from the table is
a mapping error ("CPT 22899 not in spine-procedures"), a code outside it is simply not ours
(a knee replacement is out of scope, not an error).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BUNDLED = Path(__file__).with_name("codemaps")


class CodeMapError(Exception):
    """A code map file is invalid; each problem (one a line) gives file and line."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def normalise(system: str, code: str) -> str:
    """Codes as hospitals send them, made comparable: ICD-10 without dots, upper case."""
    code = code.strip().upper()
    if system in ("icd10cm", "icd10pcs"):
        code = code.replace(".", "")
    elif system == "cpt":
        code = code.split(":", 1)[0].split("-", 1)[0]  # 22633:59 / 22633-59 carry a modifier
    return code


def display_code(system: str, code: str) -> str:
    """A code in the form staff read it: normalised, ICD-10-CM with its dot."""
    return display_icd10cm(code) if system == "icd10cm" else normalise(system, code)


def display_icd10cm(code: str) -> str:
    """M48062 → M48.062, the form registries and staff read."""
    code = normalise("icd10cm", code)
    return code if len(code) <= 3 else f"{code[:3]}.{code[3:]}"


@dataclass(frozen=True, slots=True)
class Entry:
    system: str
    code: str
    match: str
    values: dict[str, Any]
    line: int


@dataclass(frozen=True, slots=True)
class ScopeRule:
    system: str
    prefix: str | None = None
    low: str | None = None
    high: str | None = None

    def covers(self, code: str) -> bool:
        if self.prefix is not None:
            return code.startswith(self.prefix)
        assert self.low is not None and self.high is not None
        return len(code) == len(self.low) and self.low <= code <= self.high


@dataclass
class CodeMap:
    name: str
    version: str
    systems: dict[str, str]  # short name → FHIR system URI
    aliases: dict[str, str]  # any accepted spelling (URI, OID, v2 name) → short name
    value_columns: dict[str, Any]  # column → allowed values list, or "int"/"str"
    scope: list[ScopeRule]
    table: Path
    exact: dict[tuple[str, str], Entry] = field(default_factory=dict)
    prefixes: list[Entry] = field(default_factory=list)
    patterns: list[Entry] = field(default_factory=list)
    # Hospitals send the same few hundred codes millions of times: remember each answer.
    _cache: dict[tuple[str, str], tuple[Entry | None, bool]] = field(default_factory=dict, repr=False)

    def system_name(self, system: str) -> str | None:
        """The short name for a FHIR system URI, OID or v2 coding-system name."""
        return self.aliases.get(system) or self.aliases.get(system.upper())

    def lookup(self, system: str, code: str) -> Entry | None:
        return self.classify(system, code)[0]

    def classify(self, system: str, code: str) -> tuple[Entry | None, bool]:
        """(entry or None, whether the code is in this map's scope), cached."""
        key = (system, code)
        hit = self._cache.get(key)
        if hit is None:
            entry = self._lookup(system, code)
            norm = normalise(system, code)
            hit = (entry, entry is not None or any(r.system == system and r.covers(norm) for r in self.scope))
            if len(self._cache) < 100_000:
                self._cache[key] = hit
        return hit

    def _lookup(self, system: str, code: str) -> Entry | None:
        norm = normalise(system, code)
        hit = self.exact.get((system, norm))
        if hit is not None:
            return hit
        for entry in self.patterns:
            if entry.system == system and _pattern_match(entry.code, norm):
                return entry
        for entry in self.prefixes:  # longest prefix first
            if entry.system == system and norm.startswith(entry.code):
                return entry
        return None

    def in_scope(self, system: str, code: str) -> bool:
        return self.classify(system, code)[1]

    def entries(self) -> Iterator[Entry]:
        yield from self.exact.values()
        yield from self.patterns
        yield from self.prefixes


def _pattern_match(pattern: str, code: str) -> bool:
    return len(pattern) == len(code) and all(p in ("_", c) for p, c in zip(pattern, code, strict=True))


def _scope_rule(raw: Any, where: str) -> ScopeRule:
    if not isinstance(raw, dict) or "system" not in raw:
        raise CodeMapError(f"{where}: a scope rule needs system and prefix, or from/to")
    if "prefix" in raw:
        return ScopeRule(str(raw["system"]), prefix=normalise(raw["system"], str(raw["prefix"])))
    if "from" in raw and "to" in raw:
        low, high = normalise(raw["system"], str(raw["from"])), normalise(raw["system"], str(raw["to"]))
        if len(low) != len(high):
            raise CodeMapError(f"{where}: from and to must have the same length")
        return ScopeRule(str(raw["system"]), low=low, high=high)
    raise CodeMapError(f"{where}: a scope rule needs prefix, or from and to")


def _coerce(column: str, spec: Any, raw: str, where: str) -> Any:
    raw = raw.strip()
    if raw == "":
        return None
    if spec == "int":
        try:
            return int(raw)
        except ValueError:
            raise CodeMapError(f"{where}: {column} must be a whole number, got {raw!r}") from None
    if spec == "bool":
        if raw.lower() not in ("true", "false", "yes", "no", "1", "0"):
            raise CodeMapError(f"{where}: {column} must be true or false, got {raw!r}")
        return raw.lower() in ("true", "yes", "1")
    if spec == "str":
        return raw
    if isinstance(spec, list) and raw not in spec:
        raise CodeMapError(f"{where}: {column} {raw!r} is not one of {', '.join(map(str, spec))}")
    return raw


def load_codemap(manifest: Path) -> CodeMap:
    try:
        meta = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CodeMapError(f"{manifest}: cannot read code map manifest: {exc}") from None
    if not isinstance(meta, dict):
        raise CodeMapError(f"{manifest}: expected a mapping")
    for key in ("name", "version", "systems", "values", "table"):
        if key not in meta:
            raise CodeMapError(f"{manifest}: missing key {key!r}")
    systems = {str(k): str(v) for k, v in meta["systems"].items()}
    aliases = {name: name for name in systems} | {uri: name for name, uri in systems.items()}
    for name, spellings in (meta.get("system_aliases") or {}).items():
        if name not in systems:
            raise CodeMapError(f"{manifest}: system_aliases names unknown system {name!r}")
        aliases.update({str(s): name for s in spellings} | {str(s).upper(): name for s in spellings})
    cmap = CodeMap(
        name=str(meta["name"]),
        version=str(meta["version"]),
        systems=systems,
        aliases=aliases,
        value_columns=dict(meta["values"]),
        scope=[],
        table=manifest.with_name(str(meta["table"])),
    )
    # Every problem of the manifest's scope and of the table is reported at once, so staff
    # fix a file in one round instead of one error per run of ``mappings check``.
    problems: list[str] = []
    for i, raw in enumerate(meta.get("scope") or []):
        try:
            cmap.scope.append(_scope_rule(raw, f"{manifest}: scope[{i}]"))
        except CodeMapError as exc:
            problems.extend(exc.problems)
    try:
        _load_table(cmap)
    except CodeMapError as exc:
        problems.extend(exc.problems)
    if problems:
        raise CodeMapError(*problems)
    return cmap


def _load_table(cmap: CodeMap) -> None:
    """Read the CSV; raises one CodeMapError listing every bad row (file:line each)."""
    try:
        handle = cmap.table.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise CodeMapError(f"{cmap.table}: cannot read code map table: {exc.strerror}") from None
    problems: list[str] = []
    with handle:
        reader = csv.DictReader(handle)
        required = {"system", "code", *cmap.value_columns}
        missing = required - set(reader.fieldnames or [])
        if missing:
            raise CodeMapError(f"{cmap.table}:1: missing columns {', '.join(sorted(missing))}")
        seen: dict[tuple[str, str, str], int] = {}
        for row in reader:
            try:
                entry = _entry(cmap, row, reader.line_num, seen)
            except CodeMapError as exc:
                problems.extend(exc.problems)
                continue
            if entry.match == "exact":
                cmap.exact[(entry.system, entry.code)] = entry
            elif entry.match == "pattern":
                cmap.patterns.append(entry)
            else:
                cmap.prefixes.append(entry)
        cmap.prefixes.sort(key=lambda e: -len(e.code))
    if problems:
        raise CodeMapError(*problems)


def _entry(
    cmap: CodeMap, row: dict[str, str | None], line: int, seen: dict[tuple[str, str, str], int]
) -> Entry:
    """One CSV row as an Entry; ``seen`` (code → first line) finds duplicates."""
    where = f"{cmap.table}:{line}"
    system = (row.get("system") or "").strip()
    if system not in cmap.systems:
        raise CodeMapError(f"{where}: unknown system {system!r} (declare it under systems:)")
    code = normalise(system, row.get("code") or "")
    if not code:
        raise CodeMapError(f"{where}: empty code")
    match = (row.get("match") or "exact").strip() or "exact"
    if match not in ("exact", "prefix", "pattern"):
        raise CodeMapError(f"{where}: match must be exact, prefix or pattern, got {match!r}")
    ident = (system, code, match)
    if ident in seen:
        raise CodeMapError(
            f"{where}: duplicate code {display_code(system, code)} (first at line {seen[ident]})"
        )
    seen[ident] = line
    problems: list[str] = []
    values: dict[str, Any] = {}
    for column, spec in cmap.value_columns.items():
        try:
            values[column] = _coerce(column, spec, row.get(column) or "", where)
        except CodeMapError as exc:
            problems.extend(exc.problems)
    if problems:
        raise CodeMapError(*problems)
    return Entry(system, code, match, values, line)


def append_code(cmap: CodeMap, system: str, code: str, values: dict[str, Any], note: str = "") -> None:
    """Add a code to the CSV (the review UI's "add to code map"); values are checked first."""
    where = f"{cmap.table} (new row)"
    clean = {c: _coerce(c, spec, str(values.get(c, "")), where) for c, spec in cmap.value_columns.items()}
    with cmap.table.open(newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    row = {
        "system": system,
        "code": code,
        "match": "exact",
        # Booleans as the file writes them (false, not Python's False).
        **{k: "" if v is None else (str(v).lower() if isinstance(v, bool) else v) for k, v in clean.items()},
    }
    if "source" in header:
        row["source"] = note or "added in review"
    with cmap.table.open("a", newline="", encoding="utf-8") as fh:
        csv.DictWriter(fh, fieldnames=header, extrasaction="ignore").writerow(row)
    _reset(cmap)


def _reset(cmap: CodeMap) -> None:
    cmap.exact.clear()
    cmap.prefixes.clear()
    cmap.patterns.clear()
    cmap._cache.clear()
    _load_table(cmap)


def load_codemaps(*directories: Path | None, problems: list[str] | None = None) -> dict[str, CodeMap]:
    """All code maps in the bundled folder, then site folders (a site map replaces by name).

    With ``problems``, broken files are reported there and the others still load.
    """
    maps: dict[str, CodeMap] = {}
    for directory in (BUNDLED, *directories):
        if directory is None:
            continue
        for manifest in sorted(directory.glob("*.yaml")):
            try:
                cmap = load_codemap(manifest)
            except CodeMapError as exc:
                if problems is None:
                    raise
                problems.extend(exc.problems)
                continue
            maps[cmap.name] = cmap
    return maps


def iter_codes(cmaps: Iterable[CodeMap]) -> Iterator[tuple[str, Entry]]:
    for cmap in cmaps:
        for entry in cmap.entries():
            yield cmap.name, entry
