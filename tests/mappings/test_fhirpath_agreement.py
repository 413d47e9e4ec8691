"""The FHIRPath compiler against fhirpathpy (an independent implementation) on EVERY expression
the project runs: each path, forEach, repeat and where of the shipped views
(mappings/views/*.yaml) on the sample feed's resources, each rule and exclude ``when`` on the
registry rows those resources map to, and each expression of the SQL-on-FHIR v2 suite
(tests/fixtures/sql-on-fhir-v2) on the suite's resources.

Each expression is evaluated where the view evaluates it: a column path on every node its
enclosing forEach / repeat yields (with ``%rowIndex``), constants substituted. The nodes
themselves come from each implementation's own evaluation of the enclosing paths, so a
disagreement there shows up too.

Where fhirpathpy cannot take part, that is listed below with the reason, and the listing is
checked (if fhirpathpy starts to implement a function, the test says so).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import fhirpathpy
import orjson
import pytest
import yaml
from fhirpathpy.engine.nodes import FP_Type
from fhirpathpy.models import models

from mappings.engine import BUNDLED as BUNDLED_VIEWS
from mappings.fhirpath import compile_expression
from tests.conftest import FIXTURES, SAMPLE_FEED
from tests.golden.runner import golden_app

R4 = models["r4"]
SOF_SUITE = FIXTURES / "sql-on-fhir-v2" / "tests"
VARIABLES = frozenset({"rowIndex"})
ERROR = "<error>"  # either side refusing the expression; both must (their exceptions differ)

# Functions fhirpathpy 2.2 does not implement: expressions using them are evaluated by the
# engine only, and their results are checked by the SQL-on-FHIR suite's expected rows
# (tests/mappings/test_sof_conformance.py).
NOT_IN_FHIRPATHPY = {
    "lowBoundary": "FHIRPath 3.0 (R5) function",
    "highBoundary": "FHIRPath 3.0 (R5) function",
}

# Where the engine follows the SQL-on-FHIR suite rather than fhirpathpy, and why.
DIVERGENCES = {
    "join": "join() of an empty collection: the suite (fhirpath.json, 'string join') expects "
    "'' where fhirpathpy returns empty",
}


def _spec_reference_key(inputs: list[Any], type_info: Any = None) -> list[Any]:
    """SQL-on-FHIR getReferenceKey([type]), written from the specification for fhirpathpy
    (keys are ids, as the engine's; only their equality is ever observed)."""
    out = []
    for ref in inputs:
        literal = ref.get("reference") if isinstance(ref, dict) else None
        if not isinstance(literal, str) or "/" not in literal:
            continue
        parts = literal.split("/")
        if "_history" in parts:
            parts = parts[: parts.index("_history")]
        if type_info is None or parts[-2] == type_info.name:
            out.append(parts[-1])
    return out


# The two SQL-on-FHIR functions are not FHIRPath; fhirpathpy takes them as user functions.
SOF_FUNCTIONS = {
    "getResourceKey": {
        "fn": lambda inputs: [r["id"] for r in inputs if isinstance(r, dict) and "id" in r],
        "arity": {0: []},
    },
    "getReferenceKey": {"fn": _spec_reference_key, "arity": {0: [], 1: ["TypeSpecifier"]}},
}
THEIR_OPTIONS = {"userInvocationTable": SOF_FUNCTIONS}


@dataclass
class Evaluation:
    """One expression on one node: what each implementation made of it."""

    node: str
    ours: Any  # the result, or ERROR
    theirs: Any
    detail: str = ""  # what the errors were


@dataclass
class Expression:
    source: str  # "views/procedure.yaml", "sof:basic.json"
    text: str
    evaluations: list[Evaluation] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.source}:{self.text}"


def _plain(value: Any) -> Any:
    """Results of either side as JSON-comparable values (numbers as numbers, temporal and
    quantity values as their FHIRPath text)."""

    def default(v: Any) -> Any:
        if isinstance(v, Decimal):
            return float(v)
        if isinstance(v, FP_Type | date):
            return str(v)
        raise TypeError(type(v).__name__)

    return json.loads(json.dumps(value, default=default, sort_keys=True))


class Collector:
    """Walks views the way mappings/viewdef.py evaluates them, on both implementations."""

    def __init__(self) -> None:
        self.expressions: dict[str, Expression] = {}

    def evaluate(self, source: str, text: str, consts: Mapping[str, Any], ours_node: Any,
                 theirs_node: Any, root: Any, index: int, where: str) -> tuple[list[Any], list[Any]]:
        """Both results on one node; returns the nodes each produced (for enclosed paths)."""
        expr = self.expressions.setdefault(f"{source}:{text}", Expression(source, text))
        detail = ""
        try:
            ours = compile_expression(text, constants=consts, variables=VARIABLES).fn(
                [ours_node], {"resource": root, "rowIndex": index})
            ours_out: Any = _plain(ours)
        except Exception as exc:
            ours, ours_out, detail = [], ERROR, f"engine: {type(exc).__name__}: {str(exc)[:80]}"
        # fhirpathpy defines $this only inside functions: a path starting with it is asked as
        # select(...) on the one node, which the specification makes the same thing.
        their_text = f"select({text})" if text.lstrip().startswith("$this") else text
        variables = {**consts, "resource": root, "rowIndex": index}
        try:
            theirs_raw = fhirpathpy.evaluate(theirs_node, their_text, variables, R4,
                                             {**THEIR_OPTIONS, "returnRawData": True})
            theirs_out: Any = _plain(fhirpathpy.evaluate(theirs_node, their_text, variables, R4,
                                                         THEIR_OPTIONS))
        except Exception as exc:
            theirs_raw, theirs_out = [], ERROR
            detail += f" fhirpathpy: {type(exc).__name__}: {str(exc)[:80]}"
        expr.evaluations.append(Evaluation(where, ours_out, theirs_out, detail))
        if ERROR in (ours_out, theirs_out) or len(ours) != len(theirs_raw):
            return [], []
        return ours, theirs_raw

    def view(self, source: str, view: Mapping[str, Any], resources: list[Any]) -> None:
        consts = {}
        for c in view.get("constant", []):
            values = [k for k in c if k.startswith("value")]
            if len(values) != 1:
                return  # an invalid view (the suite's expectError cases): nothing is evaluated
            value = c[values[0]]
            consts[c["name"]] = value.isoformat() if isinstance(value, date) else value
        for r in resources:
            if not isinstance(r, dict) or r.get("resourceType") != view.get("resource"):
                continue
            label = f"{r['resourceType']}/{r.get('id')}"
            for w in view.get("where", []):
                if isinstance(w, dict) and isinstance(w.get("path"), str):
                    self.evaluate(source, w["path"], consts, r, r, r, 0, label)
            for sel in view.get("select", []):
                self.select(source, sel, consts, [(r, 0)], [r], r, label)

    def select(self, source: str, sel: Any, consts: Mapping[str, Any], ours: list[tuple[Any, int]],
               theirs: list[Any], root: Any, label: str) -> None:
        if not isinstance(sel, dict):
            return
        iterate = sel.get("forEach", sel.get("forEachOrNull"))
        if isinstance(iterate, str):
            ours, theirs = self.step(source, [iterate], consts, ours, theirs, root, label, repeat=False)
        elif isinstance(sel.get("repeat"), list):
            ours, theirs = self.step(source, sel["repeat"], consts, ours, theirs, root, label, repeat=True)
        for col in sel.get("column", []):
            if isinstance(col, dict) and isinstance(col.get("path"), str):
                for (o, i), t in zip(ours, theirs, strict=True):
                    self.evaluate(source, col["path"], consts, o, t, root, i, label)
        for key in ("select", "unionAll"):
            for inner in sel.get(key, []):
                self.select(source, inner, consts, ours, theirs, root, label)

    def step(self, source: str, paths: list[Any], consts: Mapping[str, Any],
             ours: list[tuple[Any, int]], theirs: list[Any], root: Any, label: str,
             repeat: bool) -> tuple[list[tuple[Any, int]], list[Any]]:
        """The nodes of a forEach (or of a repeat, to any depth), with their row index."""
        out_ours: list[tuple[Any, int]] = []
        out_theirs: list[Any] = []
        frontier = list(zip(ours, theirs, strict=True))
        while frontier:
            found = []
            for (o, i), t in frontier:
                for path in paths:
                    if not isinstance(path, str):
                        continue
                    o_nodes, t_nodes = self.evaluate(source, path, consts, o, t, root, i, label)
                    found += [((on, n), tn) for n, (on, tn) in enumerate(zip(o_nodes, t_nodes, strict=True))]
            out_ours += [o for o, _ in found]
            out_theirs += [t for _, t in found]
            frontier = found if repeat else []
        return out_ours, out_theirs

    def rows(self, source: str, text: str, rows: list[dict[str, Any]]) -> None:
        for n, row in enumerate(rows):
            self.evaluate(source, text, {}, row, row, row, 0, f"row {n}")


def _ndjson(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_bytes().splitlines() if path.exists() else []:
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # the sample feed's deliberately broken lines
        if isinstance(value, dict):
            yield value


def _registry_rows(resource_type: str, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as rules see them (engine._row_for_fhirpath: dates as ISO text)."""
    app = golden_app()
    mapping = app.mappings[resource_type]
    rows = []
    for resource in resources:
        row = mapping.map(resource, app.site).row
        if row:
            rows.append({k: v.isoformat() if isinstance(v, date) else v for k, v in row.items()})
    return rows


def collect() -> list[Expression]:
    c = Collector()
    for path in sorted(BUNDLED_VIEWS.glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        source = f"views/{path.name}"
        rtype = spec["view"]["resource"]
        resources = list(_ndjson(SAMPLE_FEED / f"{rtype}.ndjson"))
        c.view(source, spec["view"], resources)
        rows = _registry_rows(rtype, resources)
        for key in ("rules", "exclude"):
            for item in spec["registry"].get(key, []):
                c.rows(source, item["when"], rows)
    for path in sorted(SOF_SUITE.glob("*.json")) if SOF_SUITE.is_dir() else []:
        suite = json.loads(path.read_text())
        for test in suite["tests"]:
            c.view(f"sof:{path.name}", test["view"], suite["resources"])
    return sorted(c.expressions.values(), key=lambda e: e.id)


EXPRESSIONS = collect()


def _uses(expr: Expression, names: Mapping[str, str]) -> str | None:
    return next((n for n in names if f"{n}(" in expr.text), None)


@pytest.mark.parametrize("expr", EXPRESSIONS, ids=[e.id for e in EXPRESSIONS])
def test_engine_agrees_with_fhirpathpy(expr: Expression) -> None:
    assert expr.evaluations, f"{expr.id} was never evaluated: no fixture resource reaches it"
    missing = _uses(expr, NOT_IN_FHIRPATHPY)
    if missing:
        # Still listed as missing there? Then only the engine's side can be looked at.
        assert all(e.theirs == ERROR for e in expr.evaluations), (
            f"fhirpathpy now evaluates {missing}(): drop it from NOT_IN_FHIRPATHPY")
        assert not any(e.ours == ERROR for e in expr.evaluations)
        pytest.skip(f"fhirpathpy has no {missing}() ({NOT_IN_FHIRPATHPY[missing]})")
    diverging = _uses(expr, DIVERGENCES)
    differ = [
        e for e in expr.evaluations
        if e.ours != e.theirs and not (diverging and e.ours == [""] and e.theirs == [])
    ]
    assert not differ, "\n".join(
        f"{e.node}: engine {e.ours!r}, fhirpathpy {e.theirs!r} {e.detail}" for e in differ[:5])


def test_every_shipped_expression_is_compared() -> None:
    # What the YAML holds, read independently of the walk above: each path / forEach /
    # forEachOrNull / repeat / where path of a view, each rule and exclude condition.
    def paths(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("path", "forEach", "forEachOrNull", "when") and isinstance(value, str):
                    yield value
                elif key == "repeat" and isinstance(value, list):
                    yield from (v for v in value if isinstance(v, str))
                else:
                    yield from paths(value)
        elif isinstance(node, list):
            for item in node:
                yield from paths(item)

    for path in sorted(BUNDLED_VIEWS.glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        expected = set(paths(spec["view"])) | set(paths(spec["registry"].get("rules", [])))
        expected |= set(paths(spec["registry"].get("exclude", [])))
        compared = {e.text for e in EXPRESSIONS if e.source == f"views/{path.name}"}
        assert expected and expected == compared, path.name


def test_every_suite_expression_is_compared() -> None:
    if not SOF_SUITE.is_dir():
        pytest.skip(f"SQL-on-FHIR suite not found at {SOF_SUITE}")
    sof = [e for e in EXPRESSIONS if e.source.startswith("sof:")]
    # 134 tests over 22 files; every valid view's expressions, counted once per file.
    assert len({e.source for e in sof}) == 22
    assert len(sof) >= 100
    compared = sum(len(e.evaluations) for e in sof)
    assert compared >= 1000  # each on every node it is evaluated at, not a sample


def test_listed_divergences_still_occur() -> None:
    # A divergence that no longer shows is a rule that hides nothing: drop it from the list.
    for name in DIVERGENCES:
        assert any(
            e.ours != e.theirs for x in EXPRESSIONS if _uses(x, {name: ""}) for e in x.evaluations
        ), name
