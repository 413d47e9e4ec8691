"""FHIR import and remap throughput against a floor measured in the same run.

Each figure is a whole ``registry-adapter`` process (as an operator runs it), timed wall-clock,
with its peak RSS read from the kernel (``wait4``):

- floor: orjson parse, SHA-256 of the line, executemany of the raw line and five fields into
  SQLite, one transaction per 1,000 (what any loader of these files costs at least);
- ``registry-adapter import`` of the generator's feed (default configuration, validation on);
- ``registry-adapter reprocess --all`` of the same store (remap from raw);
- optionally the same two on PostgreSQL (``--postgres``), printed as a ratio to SQLite.

The feed is made by ``examples/generate_sample_feed.py --patients N`` (31,921 resources at
5,000 patients). Figures are resources per second and the ratio ``pipeline time / floor time``.

Run: .venv/bin/python benchmarks/bench_import.py [--patients 2000] [--rounds 1] [--postgres]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_SERVER = os.environ.get("REGISTRY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def feed_lines(feed: Path) -> list[bytes]:
    """Every resource of the feed as one JSON line (bundles flattened), as the floor reads them."""
    lines: list[bytes] = []
    for path in sorted(feed.iterdir()):
        data = path.read_bytes()
        if path.suffix == ".ndjson":
            lines += [ln for ln in data.splitlines() if ln.strip()]
        else:
            bundle = orjson.loads(data)
            lines += [orjson.dumps(e["resource"]) for e in bundle.get("entry", []) if "resource" in e]
    return lines


def floor(lines: list[bytes], db: Path) -> tuple[float, float]:
    """(wall, CPU) seconds for the floor: parse, hash, executemany raw + five fields, commit
    per 1,000."""
    started, cpu = time.perf_counter(), time.process_time()
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TABLE staged (id INTEGER PRIMARY KEY, source TEXT, resource_type TEXT, resource_id TEXT,"
        " version_id TEXT, content_hash TEXT, raw BLOB)"
    )
    for start in range(0, len(lines), 1000):
        rows = []
        for line in lines[start : start + 1000]:
            try:
                res = orjson.loads(line)
            except orjson.JSONDecodeError:  # the feed's deliberately broken line
                continue
            if not isinstance(res, dict):
                continue
            meta = res.get("meta") or {}
            rows.append(("floor", res.get("resourceType"), res.get("id"), meta.get("versionId"),
                         hashlib.sha256(line).hexdigest(), line))
        with conn:
            conn.executemany(
                "INSERT INTO staged (source, resource_type, resource_id, version_id, content_hash, raw)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
    conn.close()
    return time.perf_counter() - started, time.process_time() - cpu


def timed(argv: list[str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, peak RSS in MB) of one child process (CPU: user + system,
    which a machine shared with other work disturbs less than wall time)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):  # 1: some records failed mapping (the feed has deliberate errors)
        raise SystemExit(f"{argv[1:4]} exited {code}: {stderr[-2000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024


def write_config(work: Path, url: str) -> Path:
    cfg = work / "config.yaml"
    cfg.write_text(
        "site: {id: bench, timezone: America/Chicago, pseudonym_key: bench-key-0123456789abcdef}\n"
        f"database: {{url: '{url}'}}\n"
        "logging: {format: json, level: WARNING}\n"
    )
    return cfg


def registry(cfg: Path, *args: str) -> list[str]:
    return [str(BIN / "registry-adapter"), "--config", str(cfg), *args]


def pg_database(name: str) -> str:
    """A fresh PostgreSQL database for this run; returns its URL."""
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return PG_SERVER.rsplit("/", 1)[0] + "/" + name


def drop_pg(name: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def run_store(work: Path, feed: Path, url: str) -> dict[str, tuple[float, float, int]]:
    cfg = write_config(work, url)
    subprocess.run(registry(cfg, "db", "upgrade"), check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return {
        "import": timed(registry(cfg, "import", str(feed))),
        "reprocess --all": timed(registry(cfg, "reprocess", "--all")),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=1, help="rounds; the median is printed")
    parser.add_argument("--postgres", action="store_true", help="also run on PostgreSQL (ratio to SQLite)")
    parser.add_argument("--feed", type=Path, help="an existing feed folder instead of generating one")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        work = Path(tmp)
        feed = args.feed
        if feed is None:
            feed = work / "feed"
            subprocess.run(
                [sys.executable, "examples/generate_sample_feed.py", "--patients", str(args.patients),
                 "--out", str(feed)],
                check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
            )
        lines = feed_lines(feed)
        n = len(lines)
        print(f"feed: {n:,} resources ({args.patients:,} patients)", flush=True)
        results: dict[str, list[tuple[float, float, int]]] = {}
        floors: list[tuple[float, float]] = []
        for r in range(args.rounds):
            floors.append(floor(lines, work / f"floor{r}.db"))
            rnd = work / f"sqlite{r}"
            rnd.mkdir()
            for name, figure in run_store(rnd, feed, f"sqlite:///{rnd / 'registry.db'}").items():
                results.setdefault(f"sqlite {name}", []).append(figure)
            if args.postgres:
                db = f"bench_import_{os.getpid()}_{r}"
                pg = work / f"pg{r}"
                pg.mkdir()
                try:
                    for name, figure in run_store(pg, feed, pg_database(db)).items():
                        results.setdefault(f"postgresql {name}", []).append(figure)
                finally:
                    drop_pg(db)
        floor_s = sorted(f[0] for f in floors)[len(floors) // 2]
        floor_cpu = sorted(f[1] for f in floors)[len(floors) // 2]
        label = "floor (orjson, sha256, executemany)"
        print(f"{label:34s} {n / floor_s:9,.0f} resources/s  {floor_s:7.2f} s wall  {floor_cpu:7.2f} s CPU")
        medians: dict[str, float] = {}
        for name, figures in results.items():
            seconds = sorted(f[0] for f in figures)[len(figures) // 2]
            cpu = sorted(f[1] for f in figures)[len(figures) // 2]
            rss = max(f[2] for f in figures)
            medians[name] = seconds
            print(
                f"{name:34s} {n / seconds:9,.0f} resources/s  {seconds:7.2f} s wall  {cpu:7.2f} s CPU  "
                f"{seconds / floor_s:5.1f}x floor (CPU {cpu / floor_cpu:5.1f}x)  peak RSS {rss} MB",
                flush=True,
            )
        for step in ("import", "reprocess --all"):
            if f"postgresql {step}" in medians:
                ratio = medians[f"postgresql {step}"] / medians[f"sqlite {step}"]
                print(f"PostgreSQL / SQLite, {step}: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
