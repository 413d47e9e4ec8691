"""The start page ("this month at a glance") against the demo store: its figures are the
CLI's (`registry-adapter month --json`), each completeness figure opens a list of exactly that
many time points, new and growing causes since yesterday, sends this month, submission status;
and the date filter of the reminder lists."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from starlette.testclient import TestClient

from registry_adapter.app import App
from registry_store.tables import CASES, MAPPING_ERRORS, REMINDERS
from registry_store.tables import REMINDER_SENDS as SENDS
from registry_store.timeutil import utcnow
from review.app import create_app
from tests.conftest import write_config_file
from tests.review.conftest import login, site_today

EXE = str(Path(sys.executable).with_name("registry-adapter"))


@pytest.fixture
def vera(today_app: App) -> TestClient:
    client = TestClient(create_app(today_app), base_url="http://testserver")
    assert login(client, "vera").status_code == 303
    return client


def cli_month(today_app: App, today_feed: Path, tmp_path: Path, period: str = "month") -> dict[str, Any]:
    sources = [{"name": "sample", "type": "files", "path": str(today_feed)}]
    config = write_config_file(tmp_path, migrate=False, sources=sources)
    assert str(tmp_path / "registry.db") in today_app.db_url  # the same store
    proc = subprocess.run(
        [EXE, "--config", str(config), "month", "--period", period, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def completeness_on_page(html: str) -> dict[str, dict[str, int]]:
    table = html.split('id="completeness"')[1].split("</table>")[0]
    out = {}
    for row in re.findall(r'<tr data-timepoint="([^"]+)">(.*?)</tr>', table, re.S):
        numbers = re.findall(r'outcome=(\w+)">([\d,]+)</a>', row[1])
        out[row[0]] = {k: int(v.replace(",", "")) for k, v in numbers}
    return out


def total_of(html: str) -> int:
    match = re.search(r"of ([\d,]+)</span>", html)
    return int(match.group(1).replace(",", "")) if match else 0


@pytest.mark.parametrize("period", ["month", "quarter"])
def test_start_page_figures_are_the_cli_figures_and_each_opens_its_list(
    today_app: App, today_feed: Path, tmp_path: Path, vera: TestClient, period: str
) -> None:
    html = vera.get(f"/?period={period}").text
    cli = cli_month(today_app, today_feed, tmp_path, period)
    page = completeness_on_page(html)
    assert page, "the demo store has PROM windows in this period"
    assert page == {
        r["timepoint"]: {k: r[k] for k in ("completed", "open", "missing")} for r in cli["completeness"]
    }
    for timepoint, counts in page.items():
        for outcome, n in counts.items():
            listed = vera.get(
                f"/reminders?status=all&period={period}&timepoint={timepoint}&outcome={outcome}"
            ).text
            assert total_of(listed) == n, (timepoint, outcome)
    assert f"As of {cli['as_of']} ({cli['timezone']})" in html
    for cause in cli["causes"]["new"]:
        assert f'href="/causes/{cause["cause_id"]}"' in html
    assert "No submission yet." in html and cli["submission"] == {"status": "none"}
    assert f">{cli['feeds'][0]['received']}<" in html


def test_new_and_growing_causes_since_yesterday(today_app: App, vera: TestClient) -> None:
    old = utcnow() - timedelta(days=3)
    with today_app.engine.begin() as conn:
        conn.execute(update(MAPPING_ERRORS).values(first_seen=old))
    assert "No new errors since yesterday." in vera.get("/").text
    with today_app.engine.begin() as conn:
        # One more record of the unlisted-code cause arrived last night: the cause grows.
        newest = conn.execute(
            select(MAPPING_ERRORS.c.id)
            .where(MAPPING_ERRORS.c.code == "codemap.unmapped_code")
            .order_by(MAPPING_ERRORS.c.id.desc())
            .limit(1)
        ).scalar_one()
        conn.execute(update(MAPPING_ERRORS).where(MAPPING_ERRORS.c.id == newest).values(first_seen=utcnow()))
    html = vera.get("/").text
    assert "growing" in html and "+1 (" in html
    assert "A procedure or diagnosis code is missing from a code map" in html


def test_reminder_sends_this_month_are_counted(today_app: App, vera: TestClient) -> None:
    with today_app.engine.begin() as conn:
        ids = conn.execute(select(REMINDERS.c.id).limit(3)).scalars().all()
        for n, (rid, status) in enumerate(zip(ids, ["sent", "sent", "failed"], strict=True)):
            conn.execute(
                SENDS.insert().values(
                    reminder_id=rid, attempt=1, channel="email", idempotency_key=f"k{n}", status=status,
                    tries=1, created_at=utcnow(), error="refused" if status == "failed" else None,
                )
            )  # fmt: skip
    html = vera.get("/").text
    sends = html.split('id="sends"')[1].split("</dl>")[0]
    assert re.search(r"<dt>Sent</dt><dd><a [^>]+>2</a>", sends)
    assert re.search(r"<dt>Failed</dt><dd><a [^>]+>1</a>", sends)
    assert "not reported" in sends  # bounces: no channel reports them


def test_reminder_lists_filter_by_surgery_date(today_app: App, vera: TestClient) -> None:
    today = site_today(today_app)
    start, end = today - timedelta(days=400), today - timedelta(days=300)
    with today_app.engine.connect() as conn:
        expected = conn.execute(
            select(REMINDERS.c.id)
            .join(CASES, CASES.c.id == REMINDERS.c.case_id)
            .where(CASES.c.surgery_date.between(start, end))
        ).all()
    html = vera.get(f"/reminders?status=all&surgery_from={start}&surgery_to={end}").text
    assert total_of(html) == len(expected) > 0
    bad = vera.get("/reminders?status=all&surgery_from=last-week")
    assert bad.status_code == 400 and "surgery from must be a date (YYYY-MM-DD)." in bad.text


def test_cases_list_filters_by_surgery_date(today_app: App, vera: TestClient) -> None:
    today = site_today(today_app)
    start, end = today - timedelta(days=400), today - timedelta(days=300)
    with today_app.engine.connect() as conn:
        expected = conn.execute(
            select(CASES.c.id).where(CASES.c.surgery_date.between(start, end), CASES.c.status == "active")
        ).all()
    html = vera.get(f"/cases?surgery_from={start}&surgery_to={end}").text
    assert total_of(html) == len(expected) > 0
    assert vera.get("/cases?surgery_to=31/12/2026").status_code == 400


def test_cases_search_by_mrn_for_reviewers_and_by_pseudonym_for_everyone(
    today_app: App, vera: TestClient
) -> None:
    from registry_store.tables import PATIENTS

    with today_app.engine.connect() as conn:
        mrn, pseudonym, patient_id = conn.execute(
            select(PATIENTS.c.mrn, PATIENTS.c.pseudonym, PATIENTS.c.id).where(PATIENTS.c.id == "pat-0004")
        ).one()
    rita = TestClient(create_app(today_app), base_url="http://testserver")
    assert login(rita, "rita").status_code == 303
    by_mrn = rita.get(f"/cases?patient={mrn}").text
    assert total_of(by_mrn) >= 1 and f">{patient_id}<" in by_mrn
    assert "MRN or registry pseudonym" in rita.get("/cases").text
    # A viewer sees no MRNs: searching by one finds nothing; the pseudonym works.
    assert total_of(vera.get(f"/cases?patient={mrn}").text) == 0
    assert total_of(vera.get(f"/cases?patient={pseudonym}").text) == total_of(by_mrn)
    assert total_of(rita.get(f"/cases?patient={mrn[:-1]}").text) == 0  # exact match only
