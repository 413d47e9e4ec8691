"""SQL-on-FHIR v2 ViewDefinition: compile once, then turn resources into rows.

``compile_view(view)`` validates the view, substitutes its constants and compiles every
FHIRPath in it (mappings.fhirpath); ``CompiledView.rows(resource)`` then only walks dicts.
Row semantics follow the specification: a select's rows are the cartesian product of its
own columns, its nested selects and its unionAll; ``forEach``/``forEachOrNull``/``repeat``
produce that product once per item; ``%rowIndex`` is the item's 0-based position.

Error messages name the view (``origin``) and the place in it (``select[1].column[0]
'cpt'``), never a value from a resource: resources carry patient data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

from mappings.fhirpath import (
    Env,
    FHIRPathEvaluationError,
    FHIRPathSyntaxError,
    Fn,
    compile_expression,
)

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*$")
_SELECT_KEYS = frozenset({"column", "select", "forEach", "forEachOrNull", "repeat", "unionAll",
                          "id", "extension", "modifierExtension"})
_COLUMN_KEYS = frozenset({"name", "path", "description", "collection", "type", "tag", "id",
                          "extension", "modifierExtension"})
_VARIABLES = frozenset({"rowIndex"})
_TEMPORAL_CONSTANTS = frozenset({"valueDate", "valueDateTime", "valueInstant", "valueTime"})


class ViewError(Exception):
    """Base of the errors this module raises."""


class ViewDefinitionError(ViewError):
    """The view is invalid (found when compiling it, or by a rule only data can reveal, such
    as a ``collection: false`` column that yields several values)."""


class ViewEvaluationError(ViewDefinitionError):
    """Running the view on one resource failed; the message says where in the view."""


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    name: str
    path: str
    type: str | None
    collection: bool
    description: str | None = None


# A column as _row reads it: (name, fn, collection, where in the view for error messages).
# A plain tuple on purpose: the interpreter unpacks exact tuples on a fast path that
# NamedTuples and dataclass attribute reads do not get, and _row is the hot loop.
_Column = tuple[str, Fn, bool, str]


@dataclass(frozen=True, slots=True)
class _Select:
    where: str
    columns: tuple[_Column, ...]
    selects: tuple[_Select, ...]
    union: tuple[_Select, ...]
    iterate: Fn | None  # forEach / forEachOrNull
    or_null: bool
    repeat: tuple[Fn, ...]
    names: tuple[str, ...]  # every column this select produces, in output order


@dataclass(frozen=True, slots=True)
class _Where:
    fn: Fn
    where: str


class CompiledView:
    """A compiled ViewDefinition. ``rows()`` is the hot path."""

    def __init__(self, resource: str, columns: list[ColumnSpec], selects: tuple[_Select, ...],
                 wheres: tuple[_Where, ...], origin: str) -> None:
        self.resource = resource
        self.columns = columns
        self.origin = origin
        self._selects = selects
        self._wheres = wheres
        self._flat = _flat_columns(selects)

    def __repr__(self) -> str:
        return f"CompiledView({self.origin!r}, resource={self.resource!r})"

    def matches(self, resource: Mapping[str, Any]) -> bool:
        """Whether ``resource`` is of the view's type and passes its ``where`` clauses."""
        if resource.get("resourceType") != self.resource:
            return False
        return self._passes({"resource": resource, "rowIndex": 0}, [resource])

    def rows(self, resource: Mapping[str, Any]) -> list[dict[str, Any]]:
        """All rows ``resource`` produces (none if it is of another type or filtered out).

        Column values are taken from the resource as they are: a column whose path ends on
        an object (``path: code``) holds that very dict, so copy it before changing it.
        Raises ViewEvaluationError when the data breaks a rule of the view.
        """
        if resource.get("resourceType") != self.resource:
            return []
        env: Env = {"resource": resource, "rowIndex": 0}
        focus = [resource]
        if self._wheres and not self._passes(env, focus):
            return []
        flat = self._flat
        if flat is not None:  # no forEach/unionAll anywhere: exactly one row
            return [_row(flat, focus, env, self.origin)]
        return _product([_select_rows(s, focus, env, self.origin) for s in self._selects])

    def _passes(self, env: Env, focus: list[Any]) -> bool:
        for clause in self._wheres:
            try:
                result = clause.fn(focus, env)
            except FHIRPathEvaluationError as exc:
                raise ViewEvaluationError(f"{self.origin}: {clause.where}: {exc}") from None
            if not result:
                return False
            if len(result) > 1 or result[0].__class__ is not bool:
                raise ViewEvaluationError(
                    f"{self.origin}: {clause.where}: must return a single boolean"
                )
            if not result[0]:
                return False
        return True


# -- running --------------------------------------------------------------------------------
def _row(columns: tuple[_Column, ...], focus: list[Any], env: Env, origin: str
         ) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name, fn, collection, where in columns:
        try:
            values = fn(focus, env)
        except FHIRPathEvaluationError as exc:
            raise ViewEvaluationError(f"{origin}: {where}: {exc}") from None
        if collection:
            row[name] = list(values)
        elif len(values) == 1:
            row[name] = values[0]
        elif not values:
            row[name] = None
        else:
            raise ViewEvaluationError(
                f"{origin}: {where}: returned {len(values)} values but is not a collection"
                " column (set collection: true or narrow the path, e.g. with first())"
            )
    return row


def _product(parts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = parts[0]
    for part in parts[1:]:
        if not part or not rows:
            return []
        rows = [{**left, **right} for left in rows for right in part]
    return rows


def _body_rows(sel: _Select, focus: list[Any], env: Env, origin: str) -> list[dict[str, Any]]:
    parts = [[_row(sel.columns, focus, env, origin)]]
    for child in sel.selects:
        parts.append(_select_rows(child, focus, env, origin))
    if sel.union:
        union_rows: list[dict[str, Any]] = []
        for branch in sel.union:
            union_rows.extend(_select_rows(branch, focus, env, origin))
        parts.append(union_rows)
    return _product(parts)


def _select_rows(sel: _Select, focus: list[Any], env: Env, origin: str
                 ) -> list[dict[str, Any]]:
    if sel.iterate is not None:
        try:
            items = sel.iterate(focus, env)
        except FHIRPathEvaluationError as exc:
            raise ViewEvaluationError(f"{origin}: {sel.where}: {exc}") from None
    elif sel.repeat:
        items = _repeat(sel, focus, env, origin)
    else:
        return _body_rows(sel, focus, env, origin)
    saved = env["rowIndex"]
    try:
        if not items:
            if not sel.or_null:
                return []
            env["rowIndex"] = 0
            return [_null_row(sel, env, origin)]
        out: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            env["rowIndex"] = index
            out.extend(_body_rows(sel, [item], env, origin))
        return out
    finally:
        env["rowIndex"] = saved  # siblings without iteration see the enclosing index


def _null_row(sel: _Select, env: Env, origin: str) -> dict[str, Any]:
    """forEachOrNull over nothing: one row, every column evaluated on the empty collection
    (so paths give null while ``%rowIndex`` gives 0), nested selects likewise."""
    row = _row(sel.columns, [], env, origin)
    for child in sel.selects:
        row.update(_null_row(child, env, origin))
    if sel.union:
        row.update(_null_row(sel.union[0], env, origin))
    return row


def _repeat(sel: _Select, focus: list[Any], env: Env, origin: str) -> list[Any]:
    """Depth-first, pre-order closure of the repeat paths (the specification's order)."""
    out: list[Any] = []

    def visit(node: Any, depth: int) -> None:
        if depth > 1000:
            raise ViewEvaluationError(f"{origin}: {sel.where}: repeat nested too deep")
        for path in sel.repeat:
            try:
                children = path([node], env)
            except FHIRPathEvaluationError as exc:
                raise ViewEvaluationError(f"{origin}: {sel.where}: {exc}") from None
            for child in children:
                out.append(child)
                visit(child, depth + 1)

    for node in focus:
        visit(node, 0)
    return out


def _flat_columns(selects: tuple[_Select, ...]) -> tuple[_Column, ...] | None:
    """All columns in order if no select iterates or unions (then a resource is one row)."""
    columns: list[_Column] = []

    def walk(sel: _Select) -> bool:
        if sel.iterate is not None or sel.repeat or sel.union:
            return False
        columns.extend(sel.columns)
        return all(walk(child) for child in sel.selects)

    return tuple(columns) if all(walk(s) for s in selects) else None


# -- compiling --------------------------------------------------------------------------------
class _ViewCompiler:
    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.constants: dict[str, Any] = {}
        self.specs: dict[str, ColumnSpec] = {}

    def error(self, where: str, reason: str) -> ViewDefinitionError:
        return ViewDefinitionError(f"{self.origin}: {where}: {reason}")

    def expression(self, text: Any, where: str) -> Fn:
        return self.compiled(text, where).fn

    def compiled(self, text: Any, where: str) -> Any:
        if not isinstance(text, str):
            raise self.error(where, f"expected a FHIRPath string, got {type(text).__name__}")
        try:
            return compile_expression(text, constants=self.constants, variables=_VARIABLES)
        except FHIRPathSyntaxError as exc:
            raise self.error(where, str(exc)) from None

    def view(self, view: Any) -> CompiledView:
        if not isinstance(view, Mapping):
            raise self.error("view", "a ViewDefinition must be a mapping")
        resource = view.get("resource")
        if not isinstance(resource, str) or not _NAME.match(resource):
            raise self.error("resource", "a resource type name is required")
        self.read_constants(view.get("constant", []))
        selects = view.get("select")
        if not isinstance(selects, Sequence) or isinstance(selects, str) or not selects:
            raise self.error("select", "at least one select is required")
        plans = tuple(self.select(s, f"select[{i}]") for i, s in enumerate(selects))
        self.unique_names([n for p in plans for n in p.names], "select")
        wheres = tuple(self.where_clauses(view.get("where", [])))
        columns = [self.specs[name] for plan in plans for name in plan.names]
        return CompiledView(resource, columns, plans, wheres, self.origin)

    def read_constants(self, constants: Any) -> None:
        if not isinstance(constants, Sequence) or isinstance(constants, str):
            raise self.error("constant", "must be a list")
        for i, const in enumerate(constants):
            where = f"constant[{i}]"
            if not isinstance(const, Mapping):
                raise self.error(where, "must be a mapping")
            name = const.get("name")
            if not isinstance(name, str) or not _NAME.match(name):
                raise self.error(where, "needs a name made of letters, digits and _")
            values = [k for k in const if k.startswith("value") and len(k) > 5]
            if len(values) != 1:
                raise self.error(f"{where} {name!r}", "needs exactly one value[x]")
            if name in self.constants or name in _VARIABLES:
                raise self.error(f"{where} {name!r}", "is defined twice")
            self.constants[name] = self.constant_value(values[0], const[values[0]],
                                                       f"{where} {name!r}")

    def constant_value(self, key: str, value: Any, where: str) -> Any:
        # YAML turns an unquoted 2024-01-01 into a date object; FHIRPath compares the ISO
        # text resources carry. An unquoted 18:12:00 YAML even reads as an integer.
        if isinstance(value, date | datetime | time):
            value = value.isoformat()
        if key in _TEMPORAL_CONSTANTS and not isinstance(value, str):
            raise self.error(where, f"{key} must be an ISO string (quote it in YAML)")
        return value

    def where_clauses(self, clauses: Any) -> list[_Where]:
        if not isinstance(clauses, Sequence) or isinstance(clauses, str):
            raise self.error("where", "must be a list")
        out = []
        for i, clause in enumerate(clauses):
            where = f"where[{i}]"
            if not isinstance(clause, Mapping):
                raise self.error(where, "must be a mapping with a path")
            compiled = self.compiled(clause.get("path"), where)
            if compiled.type_name not in (None, "boolean"):
                raise self.error(where, f"must return a boolean, not {compiled.type_name}")
            out.append(_Where(compiled.fn, where))
        return out

    def select(self, sel: Any, where: str) -> _Select:
        if not isinstance(sel, Mapping):
            raise self.error(where, "a select must be a mapping")
        unknown = set(sel) - _SELECT_KEYS
        if unknown:
            raise self.error(where, f"unknown key(s) {sorted(unknown)}")
        iterators = [k for k in ("forEach", "forEachOrNull", "repeat") if k in sel]
        if len(iterators) > 1:
            raise self.error(where, f"use only one of {iterators}")
        iterate = None
        if "forEach" in sel or "forEachOrNull" in sel:
            key = iterators[0]
            iterate = self.expression(sel[key], f"{where}.{key}")
        repeat: tuple[Fn, ...] = ()
        if "repeat" in sel:
            paths = sel["repeat"]
            if not isinstance(paths, Sequence) or isinstance(paths, str) or not paths:
                raise self.error(f"{where}.repeat", "must be a non-empty list of paths")
            repeat = tuple(self.expression(p, f"{where}.repeat[{i}]")
                           for i, p in enumerate(paths))
        columns = tuple(self.column(c, f"{where}.column[{i}]")
                        for i, c in enumerate(self.listed(sel, "column", where)))
        selects = tuple(self.select(s, f"{where}.select[{i}]")
                        for i, s in enumerate(self.listed(sel, "select", where)))
        union = tuple(self.select(s, f"{where}.unionAll[{i}]")
                      for i, s in enumerate(self.listed(sel, "unionAll", where)))
        if "unionAll" in sel and not union:
            raise self.error(f"{where}.unionAll", "must list at least one select")
        for i, branch in enumerate(union[1:], start=1):
            if branch.names != union[0].names:
                raise self.error(
                    f"{where}.unionAll[{i}]",
                    f"columns {list(branch.names)} differ from unionAll[0]'s "
                    f"{list(union[0].names)} (names and order must match)",
                )
        names = tuple(c[0] for c in columns) + tuple(
            n for s in selects for n in s.names) + (union[0].names if union else ())
        self.unique_names(list(names), where)
        return _Select(where, columns, selects, union, iterate, "forEachOrNull" in sel, repeat,
                       names)

    def listed(self, sel: Mapping[str, Any], key: str, where: str) -> Sequence[Any]:
        items = sel.get(key, [])
        if not isinstance(items, Sequence) or isinstance(items, str):
            raise self.error(f"{where}.{key}", "must be a list")
        return items

    def column(self, col: Any, where: str) -> _Column:
        if not isinstance(col, Mapping):
            raise self.error(where, "a column must be a mapping")
        unknown = set(col) - _COLUMN_KEYS
        if unknown:
            raise self.error(where, f"unknown key(s) {sorted(unknown)}")
        name = col.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise self.error(where, "needs a name made of letters, digits and _")
        where = f"{where} {name!r}"
        collection = col.get("collection", False)
        if not isinstance(collection, bool):
            raise self.error(where, "collection must be true or false")
        type_name = col.get("type")
        if type_name is not None and not isinstance(type_name, str):
            raise self.error(where, "type must be a string")
        path = col.get("path")
        fn = self.expression(path, where)  # rejects a missing or non-string path
        description = col.get("description")
        self.specs.setdefault(name, ColumnSpec(name, str(path), type_name, collection,
                                               description if isinstance(description, str)
                                               else None))
        return (name, fn, collection, where)

    def unique_names(self, names: list[str], where: str) -> None:
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise self.error(where, f"column name {name!r} is used twice")
            seen.add(name)


def compile_view(view: Mapping[str, Any], *, origin: str = "<view>") -> CompiledView:
    """Validate and compile a SQL-on-FHIR v2 ViewDefinition (raises ViewDefinitionError)."""
    return _ViewCompiler(origin).view(view)
