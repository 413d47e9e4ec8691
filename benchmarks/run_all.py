"""Run every benchmark with modest sizes and print their figures (``make bench``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

RUNS = [
    ("FHIR import, reprocess --all, PostgreSQL vs SQLite, v2 file to rows, peak RSS (vs a floor)",
     ["bench_import.py", "--patients", "5000", "--postgres", "--v2", "2000", "--rss", "1600,16000"]),
    ("the same with mapping in 2 worker processes",
     ["bench_import.py", "--patients", "5000", "--workers", "2"]),
    ("remap on PostgreSQL by 1 vs 2 `worker` processes, same rows (3 interleaved rounds)",
     ["bench_workers.py", "--patients", "5000", "--workers", "2", "--rounds", "3"]),
    ("mapping engine and pipeline vs raw JSON parsing", ["bench_mapping.py", "--n", "20000"]),
    ("SQL-on-FHIR view engine vs fhirpathpy", ["bench_viewdef.py", "-n", "20000"]),
    ("HL7 v2 listener and conversion", ["bench_hl7v2.py"]),
    ("review UI pages at scale", ["bench_review.py"]),
]


def main() -> int:
    failed = 0
    for title, argv in RUNS:
        script = HERE / argv[0]
        if not script.exists():
            continue
        print(f"\n=== {title} ({argv[0]}) ===", flush=True)
        failed += subprocess.call([sys.executable, str(script), *argv[1:]]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
