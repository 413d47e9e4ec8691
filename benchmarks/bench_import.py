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

Also, on request: an HL7 v2 file of N distinct ADT^A08s to registry rows (``--v2 N``, messages/s),
and peak RSS of imports at two feed sizes (``--rss 1600,16000``: ~10,000 and ~100,000 resources;
``make bench-1m`` runs 1,600 vs 160,000 patients, ~1,000,000 resources, with ``--remap``: the
remap of each store by ``reprocess --all`` too, its resources/s and peak RSS).

Run: .venv/bin/python benchmarks/bench_import.py [--patients 5000] [--rounds 1] [--postgres]
     [--workers 2] [--v2 2000] [--rss 1600,16000 [--remap]] [--skip-fhir]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
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


# GNU time reports the child's own peak RSS: ``ru_maxrss`` of a child this (possibly large)
# Python process spawns starts at this process's peak (Linux keeps the high-water mark across
# the exec of a vfork()ed child), which inflated small children's figures.
GNU_TIME = Path("/usr/bin/time")


def timed(argv: list[str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, peak RSS in MB) of one child process (CPU: user + system,
    which a machine shared with other work disturbs less than wall time)."""
    with tempfile.TemporaryDirectory(prefix="timed-") as tmp:
        rss_file, err_file = Path(tmp) / "rss", Path(tmp) / "stderr"
        run = [str(GNU_TIME), "-f", "%M", "-o", str(rss_file), *argv] if GNU_TIME.exists() else argv
        started = time.perf_counter()
        with err_file.open("wb") as err:  # a file, not a pipe: a chatty child never blocks on it
            proc = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
            _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        if code not in (0, 1):  # 1: some records failed mapping (the feed has deliberate errors)
            stderr = err_file.read_bytes()[-2000:].decode(errors="replace")
            raise SystemExit(f"{argv[1:4]} exited {code}: {stderr}")
        text = rss_file.read_text().strip().splitlines() if rss_file.exists() else []
        rss_kb = int(text[-1]) if text and text[-1].isdigit() else usage.ru_maxrss
    return seconds, usage.ru_utime + usage.ru_stime, rss_kb // 1024


def write_config(work: Path, url: str, workers: int = 1) -> Path:
    cfg = work / "config.yaml"
    cfg.write_text(
        "site: {id: bench, timezone: America/Chicago, pseudonym_key: bench-key-0123456789abcdef}\n"
        f"database: {{url: '{url}'}}\n"
        "logging: {format: json, level: WARNING}\n"
        f"mapping_workers: {workers}\n"
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


def run_store(work: Path, feed: Path, url: str, workers: int) -> dict[str, tuple[float, float, int]]:
    cfg = write_config(work, url, workers)
    subprocess.run(registry(cfg, "db", "upgrade"), check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return {
        "import": timed(registry(cfg, "import", str(feed))),
        "reprocess --all": timed(registry(cfg, "reprocess", "--all")),
    }


def generate(feed: Path, patients: int) -> None:
    subprocess.run(
        [sys.executable, "examples/generate_sample_feed.py", "--patients", str(patients), "--out", str(feed)],
        check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
    )


def bench_v2(work: Path, messages: int, workers: int) -> None:
    """HL7 v2 file → registry rows: ``registry-adapter import`` of a file of distinct ADT^A08s."""
    sys.path.insert(0, str(Path(__file__).parent))
    from v2_feed import write

    path = work / "feed.hl7"
    write(path, messages)
    d = work / "v2"
    d.mkdir()
    cfg = write_config(d, f"sqlite:///{d / 'registry.db'}", workers)
    subprocess.run(registry(cfg, "db", "upgrade"), check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    seconds, cpu, rss = timed(registry(cfg, "import", str(path)))
    print(
        f"{'HL7 v2 file -> registry rows':34s} {messages / seconds:9,.0f} messages/s  {seconds:7.2f} s wall  "
        f"{cpu:7.2f} s CPU ({messages / cpu:,.0f} messages per CPU-second)  peak RSS {rss} MB",
        flush=True,
    )


def count_resources(feed: Path) -> int:
    """``len(feed_lines(feed))`` without holding the feed (a 1,000,000-resource one is ~600 MB)."""
    n = 0
    for path in sorted(feed.iterdir()):
        if path.suffix == ".ndjson":
            with path.open("rb") as f:
                n += sum(1 for line in f if line.strip())
        else:
            n += sum(1 for e in orjson.loads(path.read_bytes()).get("entry", []) if "resource" in e)
    return n


def bench_rss(work: Path, sizes: list[int], workers: int, remap: bool = False) -> None:
    """Peak RSS of ``registry-adapter import`` at two (or more) feed sizes; with ``remap``, also
    ``reprocess --all`` of each store (the remap time and its peak RSS)."""
    peaks: list[tuple[int, int]] = []
    for patients in sizes:
        feed = work / f"rss-feed-{patients}"
        generate(feed, patients)
        n = count_resources(feed)
        d = work / f"rss-{patients}"
        d.mkdir()
        cfg = write_config(d, f"sqlite:///{d / 'registry.db'}", workers)
        subprocess.run(registry(cfg, "db", "upgrade"), check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        seconds, cpu, rss = timed(registry(cfg, "import", str(feed)))
        peaks.append((n, rss))
        print(f"{'peak RSS, import of':34s} {n:9,d} resources: {rss} MB  ({n / seconds:,.0f} resources/s, "
              f"{seconds:.1f} s wall, {cpu:.1f} s CPU)", flush=True)
        shutil.rmtree(feed)
        if remap:
            seconds, cpu, rss = timed(registry(cfg, "reprocess", "--all"))
            peaks[-1] = (n, max(rss, peaks[-1][1]))
            print(f"{'reprocess --all (remap) of':34s} {n:9,d} resources: {n / seconds:,.0f} resources/s, "
                  f"{seconds:.1f} s wall ({seconds / 60:.1f} min), {cpu:.1f} s CPU "
                  f"({n / cpu:,.0f} per CPU-second), peak RSS {rss} MB", flush=True)
        shutil.rmtree(d)
    (n0, r0), (n1, r1) = peaks[0], peaks[-1]
    print(f"peak RSS at {n1:,} / at {n0:,} resources: {r1 / r0:.2f}x ({r1} MB vs {r0} MB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=5000, help="feed size (5,000: 31,921 resources)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds; the median is printed")
    parser.add_argument("--postgres", action="store_true", help="also run on PostgreSQL (ratio to SQLite)")
    parser.add_argument("--feed", type=Path, help="an existing feed folder instead of generating one")
    parser.add_argument("--workers", type=int, default=1, help="mapping_workers for the runs")
    parser.add_argument("--v2", type=int, default=0, metavar="N",
                        help="also: a file of N v2 messages to rows")
    parser.add_argument("--rss", type=str, default="", metavar="P1,P2",
                        help="also: peak RSS of imports of P1 and P2 patients (~6.4 resources each)")
    parser.add_argument("--remap", action="store_true",
                        help="with --rss: also reprocess --all each store (remap time, peak RSS)")
    parser.add_argument("--skip-fhir", action="store_true", help="only the --v2 / --rss parts")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        work = Path(tmp)
        if args.v2:
            bench_v2(work, args.v2, args.workers)
        if args.rss:
            bench_rss(work, [int(p) for p in args.rss.split(",")], args.workers, args.remap)
        if args.skip_fhir:
            return 0
        feed = args.feed
        if feed is None:
            feed = work / "feed"
            generate(feed, args.patients)
        lines = feed_lines(feed)
        n = len(lines)
        print(f"feed: {n:,} resources ({args.patients:,} patients)", flush=True)
        results: dict[str, list[tuple[float, float, int]]] = {}
        floors: list[tuple[float, float]] = []
        for r in range(args.rounds):
            floors.append(floor(lines, work / f"floor{r}.db"))
            rnd = work / f"sqlite{r}"
            rnd.mkdir()
            url = f"sqlite:///{rnd / 'registry.db'}"
            for name, figure in run_store(rnd, feed, url, args.workers).items():
                results.setdefault(f"sqlite {name}", []).append(figure)
            if args.postgres:
                db = f"bench_import_{os.getpid()}_{r}"
                pg = work / f"pg{r}"
                pg.mkdir()
                try:
                    for name, figure in run_store(pg, feed, pg_database(db), args.workers).items():
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
