"""The registry mapping engine: a SQL-on-FHIR ViewDefinition plus a registry extension.

A mapping file (``mappings/views/*.yaml``) holds

- ``view``: a standard SQL-on-FHIR v2 ViewDefinition that flattens one resource into a row;
- ``registry``: how that row becomes a registry row: ``fields`` (column, conversion, required,
  allowed values), ``translate`` (code maps: which codes are ours, what they mean, which one
  names the category), ``exclude`` (rows that are deliberately not registry data, e.g.
  entered-in-error), ``rules`` (cross-field checks as FHIRPath over the row) and ``derive``
  (named code hooks for what cannot be declared, such as PROM scoring).

Everything that cannot be mapped becomes an ``Issue`` with a stable code; ``map`` never raises
(a converter, rule or hook that crashes becomes ``mapping.internal_error``). Values longer than
their registry column (when the target columns are given with their types) become
``mapping.value_too_long`` instead of a database error at write time.

Each file is compiled once (view, rule expressions, code-map references) and then maps a stream
of resources with no re-parsing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mappings.codemaps import CodeMap, Entry, display_code
from mappings.convert import CONVERTERS, ConversionError, SiteContext
from mappings.fhirpath import compile_path
from mappings.viewdef import CompiledView, ViewDefinitionError, ViewEvaluationError, compile_view
from registry_types.issues import Issue

BUNDLED = Path(__file__).with_name("views")

Disposition = Literal["mapped", "failed", "out_of_scope", "excluded"]

# A value that looks like a code or token may be quoted in an issue (and groups a cause by it);
# anything else (a name typed into the gender field, a whole object) could be patient data.
_CODE_LIKE = re.compile(r"[A-Za-z0-9._|:/-]{1,64}")


class ColumnLike(Protocol):
    """A target column as SQLAlchemy describes it: ``name``, and ``type.length`` if bounded."""

    @property
    def name(self) -> str: ...

    @property
    def type(self) -> Any: ...


# What a mapping may write: table → its columns, as names or as Column objects (which also
# give the maximum lengths, so over-long values are caught while mapping).
Targets = Mapping[str, Iterable[str | ColumnLike]]


class MappingFileError(Exception):
    """A mapping file is invalid; each problem (one a line) names file, line and key."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldSpec(_Spec):
    column: str
    convert: str | None = None
    required: bool = False
    allowed: list[Any] | None = None
    default: Any = None
    # A collection column yields a list; keep all of it, or (default) its first value.
    collection: bool = False


class IssueSpec(_Spec):
    code: str
    message: str


class UncodedSpec(_Spec):
    """Keep a record that has no code at all but says what it is in words (``text_column``),
    with these fixed values, instead of treating it as out of scope: a diagnosis written only
    as text on a surgical stay cannot be classified, and case assembly must say so."""

    text_column: str
    into: dict[str, Any]


class TranslateSpec(_Spec):
    """Look codes up in a code map.

    ``column`` holds Codings (dicts with system and code). Codes of a system the code map does
    not know are ignored; codes in the map's scope but missing from its table are errors.
    """

    column: str
    codemap: str
    scope: bool = True  # no code of ours at all → the record is out of scope
    codes_into: str | None = None  # keep the recognised codes ("system|code") in this field
    code_into: str | None = None  # the picked code itself (ICD-10-CM in dotted form)
    pick_where: dict[str, Any] = Field(default_factory=dict)
    pick_max: str | None = None  # among matching rows, the highest value of this column wins
    into: dict[str, str] = Field(default_factory=dict)  # registry field → code-map column
    any: dict[str, dict[str, Any]] = Field(default_factory=dict)  # flag ← any row matches
    collect: dict[str, str] = Field(default_factory=dict)  # field ← all values of a column
    unmapped: IssueSpec = IssueSpec(
        code="codemap.unmapped_code",
        message="{system} code {code} is not in code map {codemap} (version {version})",
    )
    none_picked: IssueSpec | None = None
    # With nothing matching pick_where, fill ``into`` from the best code of any kind (so an
    # add-on-only Procedure still records role addon for case assembly to judge).
    fallback: bool = False
    uncoded: UncodedSpec | None = None


class RuleSpec(_Spec):
    code: str
    message: str
    when: str  # FHIRPath over the registry row; true means the rule is broken
    field: str = ""
    severity: Literal["error", "warning"] = "error"


class ExcludeSpec(_Spec):
    when: str
    reason: str


class RegistrySpec(_Spec):
    target: str
    fields: dict[str, FieldSpec | str]
    translate: list[TranslateSpec] = Field(default_factory=list)
    exclude: list[ExcludeSpec] = Field(default_factory=list)
    rules: list[RuleSpec] = Field(default_factory=list)
    derive: list[str] = Field(default_factory=list)


class MappingSpec(_Spec):
    name: str
    description: str = ""
    version: str = "1"
    view: dict[str, Any]
    registry: RegistrySpec


@dataclass(slots=True)
class MappingResult:
    disposition: Disposition
    target: str
    row: dict[str, Any]
    issues: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.disposition == "mapped"


Hook = Callable[[Mapping[str, Any], dict[str, Any], SiteContext], list[Issue]]
_HOOKS: dict[str, Hook] = {}
# Per hook: error codes that are for review only; the record is still stored (a PROM the
# patient answered but that cannot be scored must still complete its time point).
_REVIEW_ONLY: dict[str, frozenset[str]] = {}


def register_hook(name: str, *, review_only: Iterable[str] = ()) -> Callable[[Hook], Hook]:
    """Make a Python function available to mapping files as ``derive: [name]``.

    Errors the hook returns stop the record from mapping, except those whose code is in
    ``review_only``: they are listed for review while the record is stored.
    """

    def deco(fn: Hook) -> Hook:
        _HOOKS[name] = fn
        _REVIEW_ONLY[name] = frozenset(review_only)
        return fn

    return deco


def _format(template: str, **values: Any) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError):
        return template


# "" and [] are missing values; 0 and False are values.
_EMPTY_KINDS = (str, list)


@dataclass(frozen=True, slots=True)
class _Translated:
    """One translation's outcome for a set of codings: what it writes, reports and says."""

    verdict: str
    delta: dict[str, Any]
    issues: tuple[Issue, ...]


@dataclass(frozen=True, slots=True)
class _Coded:
    """One (system, code) as a translation sees it, computed once per distinct code."""

    system: str | None
    entry: Entry | None
    scoped: bool
    code: str
    token: str
    pickable: bool
    flags: tuple[bool, ...]
    rank: Any


def _rank(coded: _Coded) -> Any:
    return coded.rank


class RegistryMapping:
    """One compiled mapping file."""

    def __init__(
        self,
        spec: MappingSpec,
        codemaps: Mapping[str, CodeMap],
        origin: str,
        targets: Targets | None = None,
    ):
        self.spec = spec
        self.name = spec.name
        self.origin = origin
        self.target = spec.registry.target
        # Every problem of the file is collected (file:line: key: reason), then raised together.
        self._problems: list[tuple[int, str]] = []  # (line, message)
        view = dict(spec.view)
        view.setdefault("resourceType", "ViewDefinition")
        view.setdefault("name", spec.name)
        columns: set[str] | None = None
        self.resource_type = str(view.get("resource", ""))
        try:
            self.view: CompiledView = compile_view(view, origin=origin)
        except ViewDefinitionError as exc:
            # The view compiler stops at its first problem; the registry part is still checked.
            self._view_problem(str(exc))
        else:
            self.resource_type = self.view.resource
            columns = {c.name for c in self.view.columns}
        self.fields: dict[str, FieldSpec] = {}
        for name, fspec in spec.registry.fields.items():
            fs = FieldSpec(column=fspec) if isinstance(fspec, str) else fspec
            loc: tuple[str | int, ...] = ("registry", "fields", name)
            if columns is not None and fs.column not in columns:
                self._problem(
                    (*loc, "column") if isinstance(fspec, FieldSpec) else loc,
                    f"no view column named {fs.column!r}",
                )
            if fs.convert and fs.convert not in CONVERTERS:
                self._problem(
                    (*loc, "convert"),
                    f"unknown conversion {fs.convert!r} (known: {', '.join(sorted(CONVERTERS))})",
                )
                fs = fs.model_copy(update={"convert": None})
            self.fields[name] = fs
        self.translations: list[tuple[TranslateSpec, CodeMap]] = []
        for i, tspec in enumerate(spec.registry.translate):
            loc = ("registry", "translate", i)
            if columns is not None and tspec.column not in columns:
                self._problem((*loc, "column"), f"no view column named {tspec.column!r}")
            if columns is not None and tspec.uncoded and tspec.uncoded.text_column not in columns:
                self._problem(
                    (*loc, "uncoded", "text_column"), f"no view column named {tspec.uncoded.text_column!r}"
                )
            cmap = codemaps.get(tspec.codemap)
            if cmap is None:
                self._problem(
                    (*loc, "codemap"),
                    f"unknown code map {tspec.codemap!r} (known: {', '.join(sorted(codemaps))})",
                )
                continue
            used = {*tspec.into.values(), *tspec.collect.values(), *tspec.pick_where}
            used |= {k for cond in tspec.any.values() for k in cond}
            if tspec.pick_max:
                used.add(tspec.pick_max)
            unknown = used - set(cmap.value_columns)
            if unknown:
                self._problem(loc, f"code map {cmap.name} has no column {', '.join(sorted(unknown))}")
            self.translations.append((tspec, cmap))
        self.excludes = [
            (self._compile_rule(x.when, ("registry", "exclude", i, "when")), x)
            for i, x in enumerate(spec.registry.exclude)
        ]
        self.rules = [
            (self._compile_rule(r.when, ("registry", "rules", i, "when")), r)
            for i, r in enumerate(spec.registry.rules)
        ]
        for i, hook in enumerate(spec.registry.derive):
            if hook not in _HOOKS:
                self._problem(
                    ("registry", "derive", i), f"unknown hook {hook!r} (known: {', '.join(sorted(_HOOKS))})"
                )
        self.hooks = [(h, _HOOKS[h]) for h in spec.registry.derive if h in _HOOKS]
        self._codes: dict[tuple[int, str, str], _Coded] = {}
        self._translated: dict[tuple[Any, ...], _Translated] = {}
        # Fields resolved once (converter function, allowed values as a set) for the hot loop.
        self._field_plan = [
            (name, fs, CONVERTERS[fs.convert] if fs.convert else None, _allowed_set(fs.allowed))
            for name, fs in self.fields.items()
        ]
        self._converted = tuple(name for name, fs in self.fields.items() if fs.convert)
        # Column → maximum length, for the columns whose length is known.
        self.max_lengths: dict[str, int] = {}
        # Columns that cannot hold NULL: emptying one of them fails the record.
        self.not_null: set[str] = set()
        if targets is not None:
            self._check_target(targets)
        if self._problems:
            # In file order, so staff can work down the file.
            raise MappingFileError(*(text for _, text in sorted(self._problems, key=lambda p: p[0])))

    def _problem(self, loc: tuple[str | int, ...], reason: str) -> None:
        """Record one problem as ``file:line: key.path: reason``."""
        self._add(loc, f"{_dotted(loc)}: {reason}")

    def _view_problem(self, message: str) -> None:
        """A ViewDefinitionError reads ``origin: select[0].column[2] 'name': reason``: find the
        key path in it, so the line of the offending part of the view can be given."""
        text = message.removeprefix(f"{self.origin}: ")
        found = _VIEW_WHERE.match(text)
        parts = _VIEW_PART.findall(found.group(1)) if found else []
        loc = ("view", *(int(index) if index else key for key, index in parts))
        shown = text if text.startswith("view") else f"view.{text}"
        self._add(loc, shown)

    def _add(self, loc: tuple[str | int, ...], text: str) -> None:
        line = _line_of(Path(self.origin), loc)
        self._problems.append((int(line[1:]) if line else 0, f"{self.origin}{line}: {text}"))

    def _check_target(self, targets: Targets) -> None:
        """Every field the mapping produces must be a column of its target table."""
        if self.target not in targets:
            self._problem(
                ("registry", "target"),
                f"unknown table {self.target!r} (known: {', '.join(sorted(targets))})",
            )
            return
        names: set[str] = set()
        for col in targets[self.target]:
            if isinstance(col, str):
                names.add(col)
                continue
            names.add(col.name)
            length = getattr(col.type, "length", None)
            if isinstance(length, int):
                self.max_lengths[col.name] = length
            if getattr(col, "nullable", True) is False:
                self.not_null.add(col.name)
        produced: dict[str, tuple[str | int, ...]] = {f: ("registry", "fields", f) for f in self.fields}
        for i, tspec in enumerate(self.spec.registry.translate):
            made = {*tspec.into, *tspec.any, *tspec.collect}
            made |= {f for f in (tspec.codes_into, tspec.code_into) if f}
            produced.update({f: ("registry", "translate", i) for f in made if f not in produced})
        for name in sorted(set(produced) - names):
            self._problem(produced[name], f"table {self.target} has no column {name}")
        # Only what this mapping writes can be too long: skip the table's other columns per record.
        self.max_lengths = {k: v for k, v in self.max_lengths.items() if k in produced}

    def _compile_rule(self, expr: str, loc: tuple[str | int, ...]) -> Callable[[Any], list[Any]]:
        try:
            return compile_path(expr)
        except Exception as exc:
            self._problem(loc, str(exc))
            return _never

    # -- mapping -----------------------------------------------------------------------

    def map(self, resource: Mapping[str, Any], ctx: SiteContext) -> MappingResult:
        """Map one resource; whatever cannot be mapped is an ``Issue``, never an exception."""
        try:
            return self._map(resource, ctx)
        except Exception as exc:  # last resort (e.g. a code map lookup): one record, not the batch
            issue = _internal_error(f"mapping {self.name}", self.resource_type, exc, rule="mapping")
            return MappingResult("failed", self.target, {}, [issue])

    def _map(self, resource: Mapping[str, Any], ctx: SiteContext) -> MappingResult:
        try:
            rows = self.view.rows(resource if isinstance(resource, dict) else dict(resource))
        except ViewEvaluationError as exc:
            # Its message names the column or where clause, never a value from the resource.
            issue = Issue(
                "mapping.view_failed", f"view {self.name}: {exc}", field=self.resource_type, rule="view"
            )
            return MappingResult("failed", self.target, {}, [issue])
        except Exception as exc:  # a resource the view cannot walk: report it, never crash the batch
            issue = Issue(
                "mapping.view_failed",
                f"view {self.name} failed: {type(exc).__name__}",
                field=self.resource_type,
                rule="view",
            )
            return MappingResult("failed", self.target, {}, [issue])
        if not rows:
            return MappingResult("out_of_scope", self.target, {})
        src = rows[0]
        out: dict[str, Any] = {}
        issues: list[Issue] = []

        fatal = False
        for ti, (tspec, _cmap) in enumerate(self.translations):
            codings = src.get(tspec.column)
            verdict = self._translate_cached(ti, codings, out, issues)
            if verdict == "out_of_scope":
                if not _keep_uncoded(tspec.uncoded, codings, src, out):
                    return MappingResult("out_of_scope", self.target, out, [])
                continue
            fatal = fatal or verdict == "unresolved"
        for name, fs, conv, allowed in self._field_plan:
            value = src.get(fs.column)
            if value.__class__ is list and not fs.collection:
                value = next((v for v in value if v is not None and v != ""), None)
            if value is None or (not value and value.__class__ in _EMPTY_KINDS):
                if fs.required:
                    issues.append(
                        Issue(
                            "mapping.required_missing",
                            f"{self.resource_type}: required {name} ({fs.column}) is missing",
                            field=name,
                            rule="required",
                        )
                    )
                    fatal = True
                out[name] = _empty(fs)
                continue
            if fs.collection and value.__class__ is not list:
                value = [value]  # one value where the view allows many: still a list column
            if conv is not None:
                try:
                    value = [conv(v, ctx) for v in value] if value.__class__ is list else conv(value, ctx)
                except ConversionError as exc:
                    issues.append(
                        Issue(
                            exc.code,
                            f"{self.resource_type}: {name} ({fs.column}) {exc}",
                            field=name,
                            rule=f"convert:{fs.convert}",
                        )
                    )
                    fatal = fatal or fs.required
                    out[name] = _empty(fs)
                    continue
                except Exception as exc:
                    where = f"{self.resource_type}: {name} (conversion {fs.convert})"
                    issues.append(_internal_error(where, name, exc, rule=f"convert:{fs.convert}"))
                    fatal = True
                    out[name] = _empty(fs)
                    continue
            if allowed is not None and not _is_allowed(value, allowed):
                code = value if isinstance(value, str) and _CODE_LIKE.fullmatch(value) else None
                shown = repr(code) if code is not None else "(a value that is not a code)"
                issues.append(
                    Issue(
                        "mapping.value_not_allowed",
                        f"{self.resource_type}: {name} {shown} is not one of "
                        f"{', '.join(map(str, fs.allowed or ()))}",
                        field=name,
                        rule="allowed",
                        value=code,
                    )
                )
                fatal = True
            out[name] = value
        fatal = self._check_lengths(out, issues) or fatal

        as_fhir = self._row_for_fhirpath(out) if self.excludes or self.rules else {}
        for i, (check, _exclude) in enumerate(self.excludes):
            try:
                if _truthy(check, as_fhir):
                    return MappingResult("excluded", self.target, out, [])
            except Exception as exc:
                issues.append(
                    _internal_error(
                        f"{self.resource_type}: exclude rule {i}", f"exclude[{i}]", exc, rule=f"exclude[{i}]"
                    )
                )
                fatal = True

        for check, rule in self.rules:
            try:
                broken = _truthy(check, as_fhir)
            except Exception as exc:
                issues.append(
                    _internal_error(
                        f"{self.resource_type}: rule {rule.code}",
                        rule.field or rule.code,
                        exc,
                        rule=rule.code,
                    )
                )
                fatal = True
                continue
            if broken:
                issues.append(
                    Issue(
                        rule.code,
                        _format(rule.message, **out),
                        field=rule.field,
                        rule=rule.code,
                        severity=rule.severity,
                    )
                )
                fatal = fatal or rule.severity == "error"

        for hook_name, hook in self.hooks:
            try:
                found = hook(resource, out, ctx)
            except Exception as exc:
                issues.append(
                    _internal_error(
                        f"{self.resource_type}: hook {hook_name}", hook_name, exc, rule=f"derive:{hook_name}"
                    )
                )
                fatal = True
                continue
            # A hook's issues name the hook as their rule unless the hook named a finer one.
            issues.extend(i if i.rule else replace(i, rule=f"derive:{hook_name}") for i in found)
            keep = _REVIEW_ONLY.get(hook_name, frozenset())
            fatal = fatal or any(i.severity != "warning" and i.code not in keep for i in found)

        return MappingResult("failed" if fatal else "mapped", self.target, out, issues)

    def _row_for_fhirpath(self, out: dict[str, Any]) -> dict[str, Any]:
        """The row as rules see it: dates become ISO strings, so FHIRPath comparisons on them
        behave as on FHIR data. Only converters make date objects (view columns are JSON values,
        code-map values are text, numbers or booleans), so only converted fields are looked at."""
        row = out.copy()
        for name in self._converted:
            value = row.get(name)
            if isinstance(value, date):
                row[name] = value.isoformat()
        return row

    def _check_lengths(self, out: dict[str, Any], issues: list[Issue]) -> bool:
        """Empty the strings longer than their column; True when that fails the record.

        A field that is required, is the id, or whose column cannot be NULL fails the record;
        any other is a warning and the row keeps its default. The value is never quoted.
        """
        fatal = False
        for name, limit in self.max_lengths.items():
            value = out.get(name)
            if value.__class__ is not str or len(value) <= limit:
                continue
            fs = self.fields.get(name)
            failing = name == "id" or name in self.not_null or (fs is not None and fs.required)
            issues.append(
                Issue(
                    "mapping.value_too_long",
                    f"{self.resource_type}: {name} has {len(value)} characters; "
                    f"column {self.target}.{name} holds at most {limit}",
                    field=name,
                    rule="column_length",
                    severity="error" if failing else "warning",
                )
            )
            out[name] = fs.default if fs is not None else None
            fatal = fatal or failing
        return fatal

    def _classify(self, ti: int, system_uri: str, code: str) -> _Coded:
        """What one coding means for translation ``ti``, remembered: feeds repeat the same few
        hundred codes, and this is the per-record hot path."""
        key = (ti, system_uri, code)
        hit = self._codes.get(key)
        if hit is None:
            tspec, cmap = self.translations[ti]
            system = cmap.system_name(system_uri)
            entry, scoped = cmap.classify(system, code) if system is not None else (None, False)
            shown = display_code(system, code) if system is not None else ""
            hit = _Coded(
                system=system,
                entry=entry,
                scoped=scoped,
                code=shown,
                token=f"{system}|{shown}",
                pickable=entry is not None
                and all(entry.values.get(k) == v for k, v in tspec.pick_where.items()),
                flags=tuple(
                    entry is not None and all(entry.values.get(k) == v for k, v in cond.items())
                    for cond in tspec.any.values()
                ),
                rank=(entry.values.get(tspec.pick_max) or 0) if entry is not None and tspec.pick_max else 0,
            )
            if len(self._codes) < 100_000:
                self._codes[key] = hit
        return hit

    def _translate_cached(self, ti: int, codings: Any, out: dict[str, Any], issues: list[Issue]) -> str:
        """``_translate``, remembered per set of (system, code) pairs: a translation depends on
        nothing else, and feeds repeat the same few code combinations record after record."""
        items = codings if codings.__class__ is list else [codings]
        key: tuple[Any, ...] = (ti, *[(c.get("system"), c.get("code")) for c in items if c.__class__ is dict])
        try:
            done = self._translated.get(key)
        except TypeError:  # a system or code that is not a string (malformed input)
            return self._translate(ti, codings, out, issues)
        if done is None:
            delta: dict[str, Any] = {}
            found: list[Issue] = []
            verdict = self._translate(ti, codings, delta, found)
            done = _Translated(verdict, delta, tuple(found))
            if len(self._translated) < 10_000:
                self._translated[key] = done
        # An unresolved translation only defaults its fields (setdefault): it must not
        # overwrite what an earlier translation of the record wrote there.
        defaults = self.translations[ti][0].into if done.verdict == "unresolved" else {}
        for name, value in done.delta.items():
            if name in defaults:
                out.setdefault(name, value)
            else:
                out[name] = value.copy() if value.__class__ is list else value
        issues.extend(done.issues)
        return done.verdict

    def _translate(self, ti: int, codings: Any, out: dict[str, Any], issues: list[Issue]) -> str:
        tspec, cmap = self.translations[ti]
        hits: list[_Coded] = []
        in_scope = False
        for coding in codings if isinstance(codings, list) else [codings]:
            if not isinstance(coding, dict):
                continue
            system_uri, raw_code = coding.get("system"), coding.get("code")
            if not isinstance(system_uri, str) or not isinstance(raw_code, str) or not raw_code.strip():
                continue
            coded = self._classify(ti, system_uri, raw_code)
            if coded.entry is not None:
                hits.append(coded)
                in_scope = True
            elif coded.scoped and coded.system is not None:
                in_scope = True
                issues.append(
                    Issue(
                        tspec.unmapped.code,
                        _format(
                            tspec.unmapped.message,
                            system=coded.system.upper(),
                            code=raw_code.strip(),
                            codemap=cmap.name,
                            version=cmap.version,
                        ),
                        field=tspec.column,
                        value=f"{coded.system}|{raw_code.strip()}"[:200],
                        rule=f"translate:{cmap.name}",
                    )
                )
        if tspec.scope and not in_scope:
            return "out_of_scope"
        if tspec.codes_into:
            out[tspec.codes_into] = [h.token for h in hits]
        for n, flag in enumerate(tspec.any):
            out[flag] = any(h.flags[n] for h in hits)
        for fname, col in tspec.collect.items():
            values = [h.entry.values.get(col) for h in hits if h.entry is not None]
            out[fname] = list(dict.fromkeys(v for v in values if v not in (None, "")))
        candidates = [h for h in hits if h.pickable] or (hits if tspec.fallback else [])
        if candidates:
            # max() keeps the first of equal ranks: the coding the hospital listed first wins.
            best = max(candidates, key=_rank) if tspec.pick_max else candidates[0]
            assert best.entry is not None
            for fname, col in tspec.into.items():
                out[fname] = best.entry.values.get(col)
            if tspec.code_into:
                out[tspec.code_into] = best.code
            return "ok"
        if tspec.into or tspec.pick_where:
            for fname in tspec.into:
                out.setdefault(fname, None)
            if tspec.none_picked and hits:
                listed = ", ".join(sorted({h.entry.code for h in hits if h.entry is not None}))
                issues.append(
                    Issue(
                        tspec.none_picked.code,
                        _format(tspec.none_picked.message, codes=listed, codemap=cmap.name),
                        field=tspec.column,
                        value=listed[:200],
                        rule=f"translate:{cmap.name}",
                    )
                )
            return "unresolved"
        return "ok"


def _keep_uncoded(
    spec: UncodedSpec | None, codings: Any, src: Mapping[str, Any], out: dict[str, Any]
) -> bool:
    """Whether an out-of-scope record is kept as uncoded (``spec``): no coding carries a code,
    and its text column says something. Fills ``out`` with the spec's values if so."""
    if spec is None:
        return False
    listed = codings if isinstance(codings, list) else [codings]
    if any(isinstance(c, dict) and isinstance(c.get("code"), str) and c["code"].strip() for c in listed):
        return False
    text = src.get(spec.text_column)
    if isinstance(text, list):
        text = next((t for t in text if t), None)
    if not isinstance(text, str) or not text.strip():
        return False
    out.update(spec.into)
    return True


# Where a ViewDefinitionError happened: "select[0].column[2]", "where[1]", "constant[0]", ...
_VIEW_WHERE = re.compile(r"((?:[A-Za-z]+)(?:\[\d+\]|\.[A-Za-z]+)*)")
_VIEW_PART = re.compile(r"([A-Za-z]+)|\[(\d+)\]")


def _dotted(loc: tuple[str | int, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _empty(fs: FieldSpec) -> Any:
    """A field's value when there is none (or it could not be converted): its default, and
    for a collection an empty list, never None (case assembly iterates it)."""
    return fs.default if fs.default is not None or not fs.collection else []


def _never(_row: Any) -> list[Any]:
    """Stands in for a rule whose expression did not compile (the file is rejected anyway)."""
    return []


def _internal_error(where: str, field_name: str, exc: Exception, *, rule: str) -> Issue:
    # The exception's text may quote the value it choked on, so only its type is reported.
    return Issue(
        "mapping.internal_error", f"{where} failed: {type(exc).__name__}", field=field_name, rule=rule
    )


def _truthy(check: Callable[[Any], list[Any]], row: Mapping[str, Any]) -> bool:
    result = check(row)
    return bool(result) and result[0] is True


def _allowed_set(allowed: list[Any] | None) -> frozenset[Any] | tuple[Any, ...] | None:
    if allowed is None:
        return None
    try:
        return frozenset(allowed)
    except TypeError:  # unhashable values in the list: compare one by one
        return tuple(allowed)


def _is_allowed(value: Any, allowed: frozenset[Any] | tuple[Any, ...]) -> bool:
    try:
        return value in allowed
    except TypeError:  # an unhashable value (a list, an object) is never an allowed code
        return False


def load_spec(path: Path) -> MappingSpec:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise MappingFileError(f"{path}{line}: not valid YAML") from None
    except OSError as exc:
        raise MappingFileError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return MappingSpec.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            lines.append(f"{path}{_line_of(path, err['loc'])}: {loc}: {err['msg']}")
        raise MappingFileError(*lines) from None


def _line_of(path: Path, loc: tuple[Any, ...]) -> str:
    """Best-effort line number of a key path, so staff can jump to the mistake."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):  # a mapping built from a spec in memory has no file
        return ""
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            nxt = node.value[part]
        else:
            nxt = None
        if nxt is None:
            break
        node = nxt
    return f":{node.start_mark.line + 1}" if node is not None else ""


def load_mappings(
    codemaps: Mapping[str, CodeMap],
    directory: Path | None = None,
    targets: Targets | None = None,
    problems: list[str] | None = None,
) -> dict[str, RegistryMapping]:
    """All mapping files, keyed by resource type (one mapping per resource type).

    ``targets`` (table → column names or SQLAlchemy Columns) checks that every field has a
    column; given Columns, over-long values also become issues instead of write errors.
    With ``problems``, every broken file is reported there and the rest still load (what
    ``mappings check`` shows); without it the first problem raises ``MappingFileError``.
    """
    import mappings.hooks  # noqa: F401  registers the derive hooks

    out: dict[str, RegistryMapping] = {}
    for path in sorted((directory or BUNDLED).glob("*.yaml")):
        try:
            mapping = RegistryMapping(load_spec(path), codemaps, str(path), targets)
            if mapping.resource_type in out:
                raise MappingFileError(
                    f"{path}: a second mapping for {mapping.resource_type} "
                    f"(first: {out[mapping.resource_type].origin})"
                )
        except MappingFileError as exc:
            if problems is None:
                raise
            problems.extend(exc.problems)
            continue
        out[mapping.resource_type] = mapping
    return out
