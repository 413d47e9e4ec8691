"""The review UI's Measures page and the case page's outcomes, last submission and PROM chart."""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

from starlette.testclient import TestClient

from registry_adapter.app import App
from registry_adapter.submission.measures import measures_by_quarter
from registry_adapter.submission.service import run_submission
from review.app import create_app
from review.auth import add_user
from tests.conftest import SAMPLE_FEED
from tests.review.conftest import PASSWORDS, login
from tests.submission.conftest import SAMPLE_OUTCOMES, ingest


def _client(make_app: Callable[..., App], tmp_path: Path) -> tuple[App, TestClient]:
    secret = tmp_path / "session.secret"
    secret.write_text("s" * 48)
    app = make_app(f"sqlite:///{tmp_path / 'ui.db'}", review={"session_secret_file": str(secret)})
    ingest(app, SAMPLE_FEED)
    ingest(app, SAMPLE_OUTCOMES)
    add_user(app.engine, "vera", PASSWORDS["vera"], "viewer")
    client = TestClient(create_app(app), base_url="http://testserver")
    assert login(client, "vera").status_code == 303
    return app, client


def test_measures_page_shows_figures_and_charts_per_quarter(
    make_app: Callable[..., App], tmp_path: Path
) -> None:
    app, client = _client(make_app, tmp_path)
    page = client.get("/measures")
    assert page.status_code == 200
    text = html.unescape(page.text)
    assert 'href="/measures" aria-current="page"' in text
    assert text.count("<svg") == 6 and "Surgical site infection within 90 days (%)" in text
    # pat-0004's lumbar case had the labelled SSI: a non-zero rate in its quarter's row only.
    figures = measures_by_quarter(app)
    quarter = next(q for q, f in figures.items() if f["lumbar"]["surgical_site_infection_rate"])
    rate = figures[quarter]["lumbar"]["surgical_site_infection_rate"]
    assert rate == round(100 / figures[quarter]["lumbar"]["cases"], 1)
    row = next(line for line in text.split("<tr>") if line.startswith(f"<td>{quarter}</td><td>lumbar</td>"))
    assert f'<td class="num">{rate}%</td>' in row


def test_case_page_shows_outcomes_last_submission_and_trajectory(
    make_app: Callable[..., App], tmp_path: Path
) -> None:
    app, client = _client(make_app, tmp_path)
    before = html.unescape(client.get("/cases/sample:proc-0004").text)
    assert "Not submitted to the registry yet." in before
    run_submission(app, period="2025Q4", output=tmp_path / "out")
    page = html.unescape(client.get("/cases/sample:proc-0004").text)
    assert "Last submitted to the registry" in page and "period 2025Q4, new" in page
    assert "surgical site infection (day 20)" in page and "45 days after discharge" in page
    assert 'href="/cases/sample:proc-0004-revision"' in page and "diabetes" in page
    # Case 1 has ODI at 90 days and 1 year: a trajectory line with both points.
    one = html.unescape(client.get("/cases/sample:proc-0001").text)
    chart = one.split('class="chart trajectory"')[1].split("</figure>")[0]
    assert "<polyline" in chart and chart.count("<circle") >= 2
