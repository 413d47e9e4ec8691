"""Page timings of the review web UI on a big store: 100,000 mapping errors, 50,000 cases.

Seeds a fresh store (SQLite in a temporary folder by default, or --db URL, e.g. an empty
PostgreSQL database) with synthetic rows shaped like the pipeline's: staged Procedures, open
mapping errors spread over causes with a long tail (a few causes hold most records, as after a
code-map gap), patients, procedures, cases, reminders and 30 nights of sync runs. Then asks
each page through the real Starlette app (routing, session, SQL, Jinja rendering) as a signed-in
reviewer and prints the median and worst time of --repeat requests per page.

Then the one heavy action: a cause of --action-records real mapping failures (Procedures with
the unlisted CPT 22899, staged and mapped by the real pipeline) is fixed through the review
actions: add 22899 to the site's code map and re-process the cause, timed end to end, with the
rest of the store (the 100,000 failed records above) left alone.

Run: .venv/bin/python benchmarks/bench_review.py [--errors 100000] [--cases 50000] [--repeat 7]
     [--action-records 5000] [--db postgresql://postgres@127.0.0.1:5432/bench_review]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from starlette.testclient import TestClient

from adapters.base import Record
from mappings.codemaps import BUNDLED
from registry_adapter.app import App, build_app
from registry_adapter.config import parse_settings
from registry_adapter.pipeline import Pipeline
from registry_store.errors import cause_id
from registry_store.staging import stage_records
from registry_store.tables import CASES, PATIENTS, PROCEDURES, REMINDERS, STAGING
from registry_store.tables import MAPPING_ERRORS as ERRORS
from registry_store.tables import SYNC_RUNS as RUNS
from review.actions import add_code_and_reprocess
from review.app import create_app
from review.auth import CurrentUser, add_user
from review.settings import ReviewSettings

CATEGORIES = ["plif_tlif", "posterior_lumbar_fusion", "lumbar_laminectomy", "lumbar_discectomy", "acdf"]
PASSWORD = "bench-password-123"
CHUNK = 5_000


def _insert(app: App, table: Any, rows: list[dict[str, Any]]) -> None:
    with app.engine.begin() as conn:
        for i in range(0, len(rows), CHUNK):
            conn.execute(table.insert(), rows[i : i + CHUNK])


def seed(app: App, n_errors: int, n_cases: int, rng: random.Random) -> dict[str, Any]:
    now = datetime.now(UTC)
    # Causes: a long tail. Cause k gets weight 1/(k+1): the first holds ~12% of the records.
    n_causes = max(10, n_errors // 50)
    weights = [1 / (k + 1) for k in range(n_causes)]
    picks = rng.choices(range(n_causes), weights=weights, k=n_errors)
    staged, errors = [], []
    for i, k in enumerate(picks, 1):
        code = f"{22000 + k % 900:05d}"
        raw = json.dumps(
            {
                "resourceType": "Procedure",
                "id": f"bench-proc-{i}",
                "status": "completed",
                "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": code}]},
                "subject": {"reference": f"Patient/bench-pat-{i % n_cases}"},
                "performedDateTime": "2025-02-10T08:15:00-06:00",
            }
        ).encode()
        staged.append(
            {
                "id": i,
                "source": "bench",
                "resource_type": "Procedure",
                "resource_id": f"bench-proc-{i}",
                "content_hash": f"{i:064x}",
                "raw": raw,
                "status": "failed",
                "received_at": now,
                "updated_at": now,
            }
        )
        value = f"cpt|{code}#{k}"
        errors.append(
            {
                "staging_id": i,
                "source": "bench",
                "resource_type": "Procedure",
                "resource_id": f"bench-proc-{i}",
                "mapping": "procedure",
                "field": "codings",
                "code": "codemap.unmapped_code",
                "value": value,
                "message": f"CPT code {code} is not in code map spine-procedures",
                "cause_id": cause_id("codemap.unmapped_code", "procedure", value),
                "status": "open",
                "first_seen": now - timedelta(days=k % 30),
                "last_seen": now,
            }
        )
    _insert(app, STAGING, staged)
    _insert(app, ERRORS, errors)

    patients, procedures, cases, reminders = [], [], [], []
    start = date(2020, 1, 1)
    for i in range(n_cases):
        surgery = start + timedelta(days=rng.randrange(2000))
        pid, proc = f"bench-pat-{i}", f"bench-case-proc-{i}"
        patients.append({"source": "bench", "id": pid, "mrn": f"MRN{i:07d}", "birth_date": date(1960, 1, 1)})
        procedures.append(
            {
                "source": "bench",
                "id": proc,
                "patient_id": pid,
                "surgery_date": surgery,
                "codes": ["cpt|22633"],
                "category": rng.choice(CATEGORIES),
                "module": "lumbar",
                "reason_condition_ids": [],
                "reason_codes": [],
            }
        )
        cases.append(
            {
                "id": f"bench:{proc}",
                "source": "bench",
                "procedure_id": proc,
                "patient_id": pid,
                "module": "lumbar",
                "category": procedures[-1]["category"],
                "procedure_ids": [proc],
                "codes": ["cpt|22633"],
                "surgery_date": surgery,
                "diagnoses": ["stenosis"],
                "diagnosis_codes": ["M48.062"],
                "status": "active",
                "updated_at": now,
            }
        )
        if i % 2 == 0:
            reminders.append(
                {
                    "case_id": f"bench:{proc}",
                    "timepoint": "90d",
                    "due_date": surgery + timedelta(days=90),
                    "window_start": surgery + timedelta(days=60),
                    "window_end": surgery + timedelta(days=180),
                    "status": rng.choice(["scheduled", "sent", "completed", "expired"]),
                }
            )
    _insert(app, PATIENTS, patients)
    _insert(app, PROCEDURES, procedures)
    _insert(app, CASES, cases)
    _insert(app, REMINDERS, reminders)
    runs = [
        {
            "source": f"feed-{s}",
            "kind": "sync",
            "started_at": now - timedelta(days=d, hours=2),
            "finished_at": now - timedelta(days=d, hours=2) + timedelta(minutes=7),
            "outcome": "succeeded",
            "counts": {"received": rng.randrange(5000, 20000), "failed": rng.randrange(0, 400)},
            "watermark": {"since": (now - timedelta(days=d)).isoformat()},
        }
        for d in range(30)
        for s in range(3)
    ]
    _insert(app, RUNS, runs)
    if app.engine.dialect.name == "postgresql":
        # What autovacuum does soon after a bulk load; without it the planner guesses.
        with app.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    add_user(app.engine, "bench", PASSWORD, "reviewer")
    biggest = cause_id("codemap.unmapped_code", "procedure", f"cpt|{22000:05d}#0")
    return {"biggest_cause": biggest, "some_case": f"bench:bench-case-proc-{n_cases // 2}"}


def seed_unlisted_cause(app: App, n: int) -> str:
    """``n`` Procedures with CPT 22899 (spine, but in no code map), mapped by the real pipeline."""
    records = [
        Record(
            {
                "resourceType": "Procedure",
                "id": f"unlisted-{i}",
                "status": "completed",
                "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "22899"}]},
                "subject": {"reference": f"Patient/bench-pat-{i}"},
                "performedDateTime": "2025-03-10T08:15:00-06:00",
            },
            origin=f"bench:{i}",
        )
        for i in range(n)
    ]
    with app.engine.begin() as conn:
        for i in range(0, n, CHUNK):
            stage_records(conn, "bench", records[i : i + CHUNK])
    Pipeline(app).map_pending(["bench"])
    return cause_id("codemap.unmapped_code", "procedure", "cpt|22899")


def time_fix_action(app: App, n: int) -> None:
    t0 = time.perf_counter()
    cause = seed_unlisted_cause(app, n)
    print(f"\nseeded a cause of {n:,} unmapped CPT 22899 records in {time.perf_counter() - t0:.1f}s")
    values = {
        "category": "other_lumbar_fusion",
        "module": "lumbar",
        "role": "index",
        "rank": "10",
        "revision": "false",
        "label": "Unlisted procedure, spine",
    }
    start = time.perf_counter()
    result = add_code_and_reprocess(
        app, CurrentUser(0, "bench", "reviewer"), cause, "spine-procedures", values
    )
    seconds = time.perf_counter() - start
    print(
        f"{'add code + re-process':<28} {seconds * 1000:>10.0f} ms for {result['reprocessed']:,} records "
        f"({result['reprocessed'] / seconds:,.0f} records/s): {result['mapped']:,} mapped, "
        f"{result['failed']:,} failed, {result['open_errors']:,} open errors left"
    )


def sign_in(client: TestClient) -> None:
    page = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token
    response = client.post(
        "/login", data={"username": "bench", "password": PASSWORD, "csrf_token": token.group(1)}
    )
    assert response.status_code == 200, response.status_code


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--errors", type=int, default=100_000)
    parser.add_argument("--cases", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--action-records", type=int, default=5_000, help="size of the cause fixed (0: skip)")
    parser.add_argument("--db", help="database URL (an empty database); default: SQLite in a temp folder")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-review-"))
    db_url = args.db or f"sqlite:///{tmp / 'registry.db'}"
    site_maps = tmp / "codemaps"
    shutil.copytree(BUNDLED, site_maps)
    settings = parse_settings(
        {
            "site": {"id": "bench", "timezone": "America/Chicago", "pseudonym_key": "bench"},
            "database": {"url": db_url},
            "logging": {"format": "json", "level": "WARNING"},
            "review": {"session_secret": "b" * 40},
            # The site's code maps: the add-code action writes here, never to the bundled ones.
            "mappings": {"codemaps": str(site_maps)},
        }
    )
    app = build_app(settings)
    app.upgrade_db()
    rng = random.Random(7)
    t0 = time.perf_counter()
    ids = seed(app, args.errors, args.cases, rng)
    print(
        f"seeded {args.errors:,} errors and {args.cases:,} cases"
        f" in {time.perf_counter() - t0:.1f}s ({db_url})"
    )

    client = TestClient(create_app(app))
    sign_in(client)
    last_causes = -(-max(10, args.errors // 50) // settings.section(ReviewSettings).page_size)
    last_cases = -(-args.cases // settings.section(ReviewSettings).page_size)
    pages = [
        ("causes, page 1", "/causes"),
        ("causes, last page", f"/causes?page={last_causes}"),
        ("causes, search", "/causes?q=22450"),
        ("causes, filter by error", "/causes?code=codemap.unmapped_code&page=3"),
        ("cause (biggest)", f"/causes/{ids['biggest_cause']}"),
        ("cause records, last page", f"/causes/{ids['biggest_cause']}?page=10000"),
        ("cases, page 1", "/cases"),
        ("cases, last page", f"/cases?page={last_cases}"),
        ("cases, search by id", "/cases?q=proc-4999"),
        ("cases, filter by category", "/cases?category=acdf&page=20"),
        ("case detail", f"/cases/{ids['some_case']}"),
        ("reminders, due", "/reminders"),
        ("reminders, all, page 100", "/reminders?status=all&page=100"),
        ("reminders CSV (all)", "/reminders.csv?status=all"),
        ("feed health", "/feeds"),
        ("metrics", "/metrics"),
    ]
    print(f"\n{'page':<28} {'median ms':>10} {'max ms':>9} {'bytes':>10}")
    for label, path in pages:
        times = []
        size = 0
        for _ in range(args.repeat):
            start = time.perf_counter()
            response = client.get(path)
            times.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, (path, response.status_code)
            size = len(response.content)
        print(f"{label:<28} {statistics.median(times):>10.1f} {max(times):>9.1f} {size:>10,}")
    if args.action_records:
        time_fix_action(app, args.action_records)


if __name__ == "__main__":
    main()
