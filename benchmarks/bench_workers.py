"""Remap on PostgreSQL by 1 and by N ``registry-adapter worker`` processes, with identical rows.

A feed is imported once (one process); then twice over: ``reprocess --all --no-map`` marks every
staged record pending and 1 (then N) ``worker --until-idle`` processes map it, claiming batches
with ``SELECT … FOR UPDATE SKIP LOCKED``. Prints the wall time of each, the ratio, and whether
the registry tables after each remap are identical to those after the single-process import.

Run: .venv/bin/python benchmarks/bench_workers.py [--patients 31000] [--workers 2]
(31,000 patients ≈ 200,000 resources.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_import import BIN, ROOT, drop_pg, feed_lines, generate, pg_database, registry, write_config

TABLES = {
    "patients": "source, id",
    "encounters": "source, id",
    "procedures": "source, id",
    "conditions": "source, id",
    "prom_responses": "source, id",
    "cases": "id",
    "mapping_errors": "staging_id, code, field",
    "staging": "source, resource_type, resource_id",
}


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


def remap(cfg: Path, workers: int) -> float:
    subprocess.run(registry(cfg, "reprocess", "--all", "--no-map", "--json"), check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    started = time.perf_counter()
    procs = [
        subprocess.Popen(registry(cfg, "worker", "--until-idle", "--json"), cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(workers)
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"worker exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=31000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    assert BIN.exists()
    db = f"bench_workers_{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        work = Path(tmp)
        feed = work / "feed"
        generate(feed, args.patients)
        n = len(feed_lines(feed))
        url = pg_database(db)
        try:
            cfg = write_config(work, url)
            subprocess.run(registry(cfg, "db", "upgrade"), check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            subprocess.run(registry(cfg, "import", str(feed)), cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            reference = snapshot(url)
            one = remap(cfg, 1)
            same_one = snapshot(url) == reference
            many = remap(cfg, args.workers)
            same_many = snapshot(url) == reference
        finally:
            drop_pg(db)
    print(f"remap of {n:,} resources on PostgreSQL (reprocess --all --no-map, then workers --until-idle):")
    print(f"  1 worker : {one:7.1f} s  {n / one:8,.0f} resources/s  "
          f"rows identical to one process: {same_one}")
    print(f"  {args.workers} workers: {many:7.1f} s  {n / many:8,.0f} resources/s  "
          f"rows identical to one process: {same_many}")
    print(f"  speed-up with {args.workers} workers: {one / many:.2f}x (machine: {os.cpu_count()} cores)")
    return 0 if same_one and same_many else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
