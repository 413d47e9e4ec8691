"""Throughput of the compiled ViewDefinition engine against the raw-parse floor and peers.

Generates N synthetic R4 Procedures (~2 KB each: meta, narrative, extension, identifier,
category, code with CPT + SNOMED codings, subject, encounter, performedDateTime (10% a
performedPeriod), recorder, performer, location, reasonReference, bodySite, outcome, note,
focalDevice) into a temporary NDJSON file, then streams it (never holding all resources)
through:

1. floor: read line + orjson.loads
2. floor + mappings.viewdef compiled view (9 columns: where(), ofType, getReferenceKey, ...)
3. floor + the same columns through fhirpathpy, each path compiled once (R4 model)
4. fhir4ds (if installed): a batch engine, so the resources are parsed, loaded into an
   in-memory DuckDB table, then the view runs as generated SQL; timed end to end and per
   phase, and its rows are compared with ours column by column. fhir4ds runs
   ``INSTALL json`` on every connection, which downloads the extension (no internet here):
   with the ``duckdb-ext-json`` package (DuckDB's json extension as a wheel, matching duckdb
   1.4.4) the connection gets it from that package's folder instead. Without it, the
   exception fhir4ds raised is printed.

Run: .venv/bin/python benchmarks/bench_viewdef.py [-n 50000] [--peer-limit 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mappings.viewdef import compile_view

CPT = "http://www.ama-assn.org/go/cpt"
SCT = "http://snomed.info/sct"

VIEW: dict[str, Any] = {
    "resource": "Procedure",
    "select": [{
        "column": [
            {"name": "id", "path": "getResourceKey()"},
            {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
            {"name": "encounter", "path": "encounter.getReferenceKey(Encounter)"},
            {"name": "status", "path": "status"},
            {"name": "cpt", "path": f"code.coding.where(system = '{CPT}').code.first()"},
            {"name": "snomed", "path": f"code.coding.where(system = '{SCT}').code.first()"},
            {"name": "performed", "path": "performed.ofType(dateTime)"},
            {"name": "body_site",
             "path": f"bodySite.coding.where(system = '{SCT}').code.first()"},
            {"name": "reason", "path": "reasonReference.first().getReferenceKey(Condition)"},
        ]
    }],
}

CPT_CODES = [("22633", "Arthrodesis, combined posterior/posterolateral, lumbar"),
             ("63047", "Laminectomy, facetectomy and foraminotomy, lumbar"),
             ("22551", "Arthrodesis, anterior interbody, cervical below C2"),
             ("22612", "Arthrodesis, posterior or posterolateral, lumbar")]
BODY_SITES = [("122496007", "Lumbar spine structure"), ("122494005", "Cervical spine structure"),
              ("122495006", "Thoracic spine structure")]


def make_procedure(i: int, rng: random.Random) -> dict[str, Any]:
    cpt, cpt_display = rng.choice(CPT_CODES)
    site, site_display = rng.choice(BODY_SITES)
    day = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    proc: dict[str, Any] = {
        "resourceType": "Procedure",
        "id": f"proc-{i}",
        "meta": {"versionId": str(rng.randint(1, 5)), "lastUpdated": f"{day}T15:02:31.123+01:00",
                 "source": "#ehr-prod-2",
                 "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-procedure"]},
        "text": {"status": "generated",
                 "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{cpt_display}</div>'},
        "extension": [{"url": "http://example.org/fhir/StructureDefinition/surgical-approach",
                       "valueCodeableConcept": {"coding": [{"system": SCT, "code": "255549009",
                                                            "display": "Posterior"}]}}],
        "identifier": [{"use": "official", "system": "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.3",
                        "value": f"OR{i:09d}"}],
        "status": "completed",
        "category": {"coding": [{"system": SCT, "code": "387713003",
                                 "display": "Surgical procedure"}]},
        "code": {"coding": [{"system": CPT, "code": cpt, "display": cpt_display},
                            {"system": SCT, "code": "609588000",
                             "display": "Arthrodesis of lumbar spine"}],
                 "text": cpt_display},
        "subject": {"reference": f"Patient/pat-{rng.randint(1, 20000)}"},
        "encounter": {"reference": f"Encounter/enc-{i}"},
        "recorder": {"reference": f"Practitioner/pr-{rng.randint(1, 300)}"},
        "performer": [{"function": {"coding": [{"system": SCT, "code": "304292004",
                                                "display": "Surgeon"}]},
                       "actor": {"reference": f"Practitioner/pr-{rng.randint(1, 300)}"},
                       "onBehalfOf": {"reference": "Organization/spine-center"}}],
        "location": {"reference": f"Location/or-{rng.randint(1, 12)}"},
        "reasonReference": [{"reference": f"Condition/cond-{i}"}],
        "bodySite": [{"coding": [{"system": SCT, "code": site, "display": site_display}]}],
        "outcome": {"coding": [{"system": SCT, "code": "385669000", "display": "Successful"}]},
        "focalDevice": [{"action": {"coding": [{"system": SCT, "code": "129338005",
                                                "display": "Surgical implantation"}]},
                         "manipulated": {"reference": f"Device/dev-{i}"}}],
    }
    if rng.random() < 0.1:
        proc["performedPeriod"] = {"start": f"{day}T08:30:00-05:00", "end": f"{day}T12:10:00-05:00"}
    else:
        proc["performedDateTime"] = f"{day}T08:30:00-05:00"
    if rng.random() < 0.8:
        proc["note"] = [{"authorReference": {"reference": "Practitioner/pr-1"},
                         "time": f"{day}T13:00:00-05:00",
                         "text": "Uneventful procedure. Estimated blood loss 250 ml. No"
                                 " intraoperative complications; neuromonitoring stable."}]
    return proc


def write_ndjson(path: Path, n: int) -> float:
    rng = random.Random(1234)
    total = 0
    with path.open("wb") as out:
        for i in range(n):
            line = orjson.dumps(make_procedure(i, rng))
            total += len(line)
            out.write(line + b"\n")
    return total / n


def stream(path: Path, limit: int | None) -> Iterator[bytes]:
    with path.open("rb") as f:
        for count, line in enumerate(f):
            if limit is not None and count >= limit:
                return
            yield line


def timed(run: Callable[[], int], repeat: int) -> tuple[float, int]:
    """Median wall time of ``repeat`` runs; returns (seconds, items of the last run)."""
    times, items = [], 0
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        items = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), items


def floor(path: Path, limit: int | None) -> int:
    loads = orjson.loads
    count = 0
    for line in stream(path, limit):
        loads(line)
        count += 1
    return count


def compiled_view(path: Path, limit: int | None) -> int:
    view = compile_view(VIEW, origin="bench")
    rows, loads = view.rows, orjson.loads
    count = 0
    for line in stream(path, limit):
        rows(loads(line))
        count += 1
    return count


def fhirpathpy_view(path: Path, limit: int | None) -> int:
    paths = fhirpathpy_paths()
    loads = orjson.loads
    count = 0
    for line in stream(path, limit):
        resource = loads(line)
        {name: _single(fn(resource)) for name, fn in paths}
        count += 1
    return count


def _single(values: list[Any]) -> Any:
    return values[0] if values else None


def fhirpathpy_paths() -> list[tuple[str, Callable[..., list[Any]]]]:
    """The view's columns through fhirpathpy; the SQL-on-FHIR key functions, which fhirpathpy
    lacks, are added through its user invocation table."""
    try:
        import fhirpathpy
        from fhirpathpy.models import models
    except ModuleNotFoundError:
        sys.exit("the fhirpathpy peer needs the 'bench' extra: pip install -e '.[bench]'")

    def reference_key(inputs: list[Any], type_info: Any = None) -> list[Any]:
        out = []
        for ref in inputs:
            literal = ref.get("reference", "") if isinstance(ref, dict) else ""
            kind, _, key = literal.rpartition("/")
            wanted = getattr(type_info, "name", None)
            if key and (wanted is None or kind.rsplit("/", 1)[-1] == wanted):
                out.append(key)
        return out

    table = {
        "getResourceKey": {"fn": lambda inputs: [r["id"] for r in inputs if isinstance(r, dict)],
                           "arity": {0: []}},
        "getReferenceKey": {"fn": reference_key, "arity": {0: [], 1: ["TypeSpecifier"]}},
    }
    options = {"userInvocationTable": table}
    return [(c["name"], fhirpathpy.compile(c["path"], models["r4"], options))
            for c in VIEW["select"][0]["column"]]


def check_same_rows(path: Path) -> None:
    """The engine and the fhirpathpy peer must agree, or the comparison means nothing."""
    view = compile_view(VIEW, origin="bench")
    paths = fhirpathpy_paths()
    for line in stream(path, 200):
        resource = orjson.loads(line)
        ours = view.rows(resource)[0]
        theirs = {name: _single(fn(resource)) for name, fn in paths}
        if ours != theirs:
            raise SystemExit(f"row mismatch on {resource['id']}: {ours} != {theirs}")
    print("check: engine and fhirpathpy agree on 200 resources; sample row:")
    print("   ", view.rows(orjson.loads(next(stream(path, 1)))))


def fhir4ds_connection() -> Any:
    """An in-memory DuckDB connection whose ``INSTALL json`` needs no download, if the
    duckdb-ext-json wheel is installed (its folder is a DuckDB extension directory)."""
    import duckdb

    config: dict[str, str | bool | int | float | list[str]] = {}
    try:
        import duckdb_ext  # from the duckdb-ext-json wheel
    except ImportError:
        pass
    else:
        config["extension_directory"] = str(Path(next(iter(duckdb_ext.__path__))) / "extensions")
    return duckdb.connect(":memory:", config=config)


def fhir4ds_peer(path: Path, limit: int | None, base: float) -> None:
    """Run VIEW through fhir4ds; print throughput and where its rows differ from ours."""
    try:
        from fhir4ds.datastore import FHIRDataStore
        from fhir4ds.dialects import DuckDBDialect

        start = time.perf_counter()
        resources = [orjson.loads(line) for line in stream(path, limit)]
        parsed = time.perf_counter()
        store = FHIRDataStore(dialect=DuckDBDialect(connection=fhir4ds_connection()))
        store.load_resources(resources)
        loaded = time.perf_counter()
        result = store.view_runner().execute_view_definition({"resourceType": "ViewDefinition", **VIEW})
        rows = result.fetchall()
        done = time.perf_counter()
    except Exception as exc:  # report exactly why the peer cannot run, and carry on
        print(f"(4) fhir4ds: cannot run: {type(exc).__name__}: {exc}")
        return
    count = len(resources)
    report("(4) fhir4ds: parse + load DuckDB + SQL view", done - start, count, base)
    print(f"    phases: parse {parsed - start:.2f}s, load {loaded - parsed:.2f}s,"
          f" view SQL {done - loaded:.2f}s; {len(rows):,} rows")
    view = compile_view(VIEW, origin="bench")
    names = [c["name"] for c in VIEW["select"][0]["column"]]
    ours = [view.rows(r)[0] for r in resources]
    theirs = [dict(zip(names, row, strict=True)) for row in rows]
    if len(theirs) != len(ours):
        print(f"    rows: fhir4ds {len(theirs):,}, ours {len(ours):,}")
    # Rows are matched by position; getResourceKey() is opaque in the specification, so a
    # different id format is not an error, but other columns must agree.
    for name in names:
        differ = [(o[name], t[name]) for o, t in zip(ours, theirs, strict=False) if o[name] != t[name]]
        verdict = "agree" if not differ else f"differ on {len(differ):,} (e.g. ours {differ[0][0]!r}," \
            f" fhir4ds {differ[0][1]!r})"
        print(f"    column {name:<10} {verdict}")


def report(label: str, seconds: float, count: int, base: float | None) -> float:
    per = seconds / count * 1e6
    ratio = f"  {per / base:5.1f}x floor" if base else ""
    print(f"{label:<44} {count / seconds:>10,.0f} res/s {per:>9.2f} µs/res{ratio}")
    return per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50_000, help="resources to generate")
    parser.add_argument("--peer-limit", type=int, default=5_000,
                        help="resources for the slow fhirpathpy peer (0 = all)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (median)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "procedures.ndjson"
        size = write_ndjson(path, args.n)
        print(f"{args.n:,} Procedures, mean {size:,.0f} bytes, {os.path.getsize(path) / 1e6:.1f} MB;"
              f" Python {sys.version.split()[0]}; median of {args.repeat}")
        check_same_rows(path)
        seconds, count = timed(lambda: floor(path, None), args.repeat)
        base = report("(1) read + orjson.loads (floor)", seconds, count, None)
        seconds, count = timed(lambda: compiled_view(path, None), args.repeat)
        ours = report("(2) floor + compiled view (9 columns)", seconds, count, base)
        print(f"    view alone: {ours - base:.2f} µs/resource")
        limit = args.peer_limit or None
        seconds, count = timed(lambda: fhirpathpy_view(path, limit), 1)
        report("(3) floor + fhirpathpy, compiled once/column", seconds, count, base)
        fhir4ds_peer(path, limit, base)


if __name__ == "__main__":
    main()
