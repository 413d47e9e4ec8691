"""Remap on PostgreSQL by 1 and by N ``registry-adapter worker`` processes, with identical rows.

A feed is imported once (one process); then twice over: ``reprocess --all --no-map`` marks every
staged record pending and 1 (then N) ``worker --until-idle`` processes map it, claiming batches
with ``SELECT … FOR UPDATE SKIP LOCKED``. Prints the wall time of each, the ratio, and whether
the registry tables after each remap are identical to those after the single-process import.

Run: .venv/bin/python benchmarks/bench_workers.py [--patients 31000] [--workers 2] [--rounds 1]
(31,000 patients ≈ 200,000 resources; ``make bench`` runs 5,000 patients, 3 rounds.) The
machine is shared: wall times move with the other load, so rounds alternate 1 and N workers
and the medians are compared; CPU seconds (all workers together) show the cost of running N.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_import import (
    BIN,
    GNU_TIME,
    ROOT,
    count_resources,
    drop_pg,
    generate,
    pg_database,
    registry,
    write_config,
)


def snapshot(url: str) -> str:
    """A digest of every registry table's content (the tests' comparison, as one hash)."""
    import hashlib

    from sqlalchemy import create_engine

    sys.path.insert(0, str(ROOT))
    from tests.registry_content import registry_content

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        content = registry_content(conn)
    engine.dispose()
    return hashlib.sha256(repr(content).encode()).hexdigest()


def remap(cfg: Path, workers: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of the workers, peak RSS in MB of the largest) of a remap by
    ``workers`` processes."""
    subprocess.run(registry(cfg, "reprocess", "--all", "--no-map", "--json"), check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    started = time.perf_counter()
    logs = [cfg.with_name(f"worker-{i}.err") for i in range(workers)]
    peaks = [cfg.with_name(f"worker-{i}.rss") for i in range(workers)]
    procs = []
    for log, peak in zip(logs, peaks, strict=True):
        # Through GNU time: this process holds registry snapshots, and a child's ru_maxrss
        # starts at its parent's peak (see bench_import.GNU_TIME).
        worker = registry(cfg, "worker", "--until-idle", "--json")
        argv = [str(GNU_TIME), "-f", "%M", "-o", str(peak), *worker]
        with log.open("wb") as sink:
            procs.append(subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=sink))
    cpu, rss = 0.0, 0
    for proc, log, peak in zip(procs, logs, peaks, strict=True):
        _, status, usage = os.wait4(proc.pid, 0)
        cpu += usage.ru_utime + usage.ru_stime
        rss = max(rss, int(peak.read_text().split()[-1]) // 1024)
        if os.waitstatus_to_exitcode(status) != 0:
            err = log.read_bytes().decode(errors="replace")
            raise SystemExit(f"worker exited {os.waitstatus_to_exitcode(status)}: {err[-2000:]}")
    return time.perf_counter() - started, cpu, rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=31000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of (1 worker, N workers), interleaved; medians are printed")
    args = parser.parse_args()
    assert BIN.exists()
    db = f"bench_workers_{os.getpid()}"
    runs: dict[int, list[tuple[float, float, int]]] = {1: [], args.workers: []}
    same = True
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        work = Path(tmp)
        feed = work / "feed"
        generate(feed, args.patients)
        n = count_resources(feed)
        url = pg_database(db)
        try:
            cfg = write_config(work, url)
            subprocess.run(registry(cfg, "db", "upgrade"), check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            subprocess.run(registry(cfg, "import", str(feed)), cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            reference = snapshot(url)
            for _ in range(args.rounds):
                for workers in runs:
                    runs[workers].append(remap(cfg, workers))
                    same = same and snapshot(url) == reference
        finally:
            drop_pg(db)
    print(f"remap of {n:,} resources on PostgreSQL (reprocess --all --no-map, then workers --until-idle), "
          f"{args.rounds} round(s), medians:")
    medians = {}
    for workers, figures in runs.items():
        wall = sorted(f[0] for f in figures)[len(figures) // 2]
        cpu = sorted(f[1] for f in figures)[len(figures) // 2]
        medians[workers] = wall
        print(f"  {workers} worker(s): {wall:7.1f} s wall  {n / wall:8,.0f} resources/s  {cpu:7.1f} s CPU "
              f"(all workers)  peak RSS {max(f[2] for f in figures)} MB  "
              f"[{', '.join(f'{f[0]:.1f}' for f in figures)} s]")
    print(f"  rows identical to one process after every remap: {same}")
    ratio = medians[1] / medians[args.workers]
    print(f"  speed-up with {args.workers} workers: {ratio:.2f}x (machine: {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
