"""The coordinators' worklist: a demo feed dated to today, reminders planned after a sync,
call outcomes / completion / opt-out recorded and audited, failed deliveries and channel
outages shown as such, and a CSV a spreadsheet cannot execute.

Real SQLite store filled by the real pipeline from the sample generator's feed dated to the
site's today; the web app is driven through Starlette's test client (the browser walk is in
test_browser_workspace.py).
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from starlette.testclient import TestClient

from registry_adapter.app import App
from registry_store import worklist
from registry_store.tables import AUDIT_LOG as AUDIT
from registry_store.tables import CASES, PATIENTS, REMINDERS
from registry_store.tables import REMINDER_SENDS as SENDS
from registry_store.timeutil import utcnow
from review.app import create_app
from scheduler.replan import replan
from tests.conftest import ROOT, SAMPLE_FEED, write_config_file
from tests.review.conftest import GENERATOR, csrf_of, generator, login, site_today


@pytest.fixture
def rita(today_app: App) -> TestClient:
    client = TestClient(create_app(today_app), base_url="http://testserver")
    assert login(client, "rita").status_code == 303
    return client


def worklist_ids(client: TestClient) -> list[int]:
    html = client.get("/reminders?status=worklist").text
    parts = html.split('href="/reminders/')[1:]
    return sorted({int(part.split('"')[0]) for part in parts if part[0].isdigit()})


def act(client: TestClient, rid: int, **form: str) -> Any:
    token = csrf_of(client.get(f"/reminders/{rid}").text)
    return client.post(f"/reminders/{rid}/act", data={"csrf_token": token, **form}, follow_redirects=False)


def reminder(app: App, rid: int) -> Any:
    with app.engine.connect() as conn:
        return conn.execute(select(REMINDERS).where(REMINDERS.c.id == rid)).one()


# -- the demo feed dated to today -------------------------------------------------------------


def test_generator_without_as_of_writes_the_bundled_feed_unchanged(tmp_path: Path) -> None:
    gen = generator()
    gen.write(gen.build(40, 20251101), tmp_path / "feed")
    for path in sorted(SAMPLE_FEED.iterdir()):
        assert (tmp_path / "feed" / path.name).read_bytes() == path.read_bytes(), path.name


def test_generator_as_of_moves_dates_and_leaves_out_answers_from_the_future(tmp_path: Path) -> None:
    gen = generator()
    as_of = date(2026, 12, 6)
    proc = subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(tmp_path / "feed"), "--as-of", as_of.isoformat()],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "feed" / "QuestionnaireResponse.ndjson").read_text()
    import json

    authored = [date.fromisoformat(json.loads(line)["authored"][:10]) for line in text.splitlines()]
    assert authored and max(authored) <= as_of
    shift = as_of - gen.BUNDLED_AS_OF
    bundled = json.loads((SAMPLE_FEED / "Procedure.ndjson").read_text().splitlines()[0])
    moved = json.loads((tmp_path / "feed" / "Procedure.ndjson").read_text().splitlines()[0])
    assert bundled["id"] == moved["id"]
    before = datetime.fromisoformat(bundled["performedDateTime"]).date()
    assert datetime.fromisoformat(moved["performedDateTime"]).date() == before + shift
    assert moved["meta"]["lastUpdated"].startswith(as_of.isoformat())


def test_cli_sync_plans_reminders_so_the_worklist_is_not_empty(tmp_path: Path, today_feed: Path) -> None:
    sources = [{"name": "sample", "type": "files", "path": str(today_feed)}]
    config = write_config_file(tmp_path, sources=sources)
    exe = str(Path(sys.executable).with_name("registry-adapter"))
    proc = subprocess.run(
        [exe, "--config", str(config), "sync", "--full", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "worklist.csv"
    proc = subprocess.run(
        [exe, "--config", str(config), "reminders", "worklist", "--csv", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.open()))
    # Planned by the sync itself (no `reminders plan` ran); reminders are off, so due time
    # points are for the coordinators to call.
    assert len(rows) >= 5
    assert {r["status"] for r in rows} <= {"scheduled", "sent"}


# -- worklist actions -------------------------------------------------------------------------


def test_the_worklist_leads_with_why_and_days_left_and_links_phones(today_app: App, rita: TestClient) -> None:
    ids = worklist_ids(rita)
    assert ids, "a feed dated to today has time points due"
    with today_app.engine.begin() as conn:
        case_id = conn.execute(select(REMINDERS.c.case_id).where(REMINDERS.c.id == ids[0])).scalar_one()
        owner = conn.execute(select(CASES.c.source, CASES.c.patient_id).where(CASES.c.id == case_id)).one()
        conn.execute(
            update(PATIENTS)
            .where(PATIENTS.c.source == owner.source, PATIENTS.c.id == owner.patient_id)
            .values(phone="+1 (312) 555-0100")
        )
    html = rita.get("/reminders?status=worklist&sort=days_left").text
    head = html.split("<thead>")[1].split("</thead>")[0]
    assert head.index("Why call") < head.index("Days left") < head.index("Phone") < head.index("MRN")
    assert 'href="tel:+13125550100"' in html
    assert "Due: call the patient" in html


def test_phone_completion_completes_the_time_point_and_stops_its_reminders(
    today_app: App, rita: TestClient
) -> None:
    rid = worklist_ids(rita)[0]
    assert reminder(today_app, rid).next_attempt_on is not None
    resp = act(rita, rid, action="call", outcome="reached", note="answered all ten questions")
    assert resp.status_code == 303
    resp = act(rita, rid, action="complete", how="phone", completed_on=site_today(today_app).isoformat())
    assert resp.status_code == 303
    page = rita.get(f"/reminders/{rid}").text
    assert "Time point recorded as completed" in page
    row = reminder(today_app, rid)
    assert (row.status, row.next_attempt_on) == ("completed", None)
    # Planning again (the nightly job, a dispatch) keeps it completed.
    replan(today_app, "test")
    assert reminder(today_app, rid).status == "completed"
    assert rid not in worklist_ids(rita)
    assert "by phone" in page and "Reached" in page and "answered all ten questions" in page
    with today_app.engine.connect() as conn:
        entries = conn.execute(
            select(AUDIT.c.action, AUDIT.c.after)
            .where(AUDIT.c.target.like(f"reminder:{rid} %"))
            .order_by(AUDIT.c.id)
        ).all()
    assert [e.action for e in entries] == ["worklist.call", "worklist.complete"]
    # The note's words stay out of the audit log (it may name the patient); its length is kept.
    assert "answered" not in str(entries[0].after) and entries[0].after["note_chars"] == 26


def test_opt_out_cancels_every_open_time_point_of_the_patient(today_app: App, rita: TestClient) -> None:
    rid = worklist_ids(rita)[0]
    case_id = reminder(today_app, rid).case_id
    assert act(rita, rid, action="opt_out").status_code == 303
    with today_app.engine.connect() as conn:
        statuses = conn.execute(
            select(REMINDERS.c.timepoint, REMINDERS.c.status, REMINDERS.c.cancel_reason).where(
                REMINDERS.c.case_id == case_id
            )
        ).all()
    open_before = [s for s in statuses if s.status not in ("completed", "expired", "missing")]
    assert open_before and all(s.cancel_reason == "opted_out" for s in open_before)


def test_assign_and_call_back_filter_and_sort_the_worklist(today_app: App, rita: TestClient) -> None:
    first, second = worklist_ids(rita)[:2]
    assert act(rita, second, action="assign", assignee="rita").status_code == 303
    today = site_today(today_app)
    assert act(rita, second, action="call_back", call_back_on=today.isoformat()).status_code == 303
    mine = rita.get("/reminders?status=worklist&assigned=rita").text
    assert f'href="/reminders/{second}"' in mine and f'href="/reminders/{first}"' not in mine
    due_back = rita.get("/reminders?status=worklist&reason=call_back").text
    assert f"Call back (planned for {today.isoformat()})" in due_back


def test_bad_action_input_is_refused_naming_reminder_and_field(today_app: App, rita: TestClient) -> None:
    rid = worklist_ids(rita)[0]
    resp = act(rita, rid, action="call", outcome="maybe")
    assert resp.status_code == 303
    page = rita.get(f"/reminders/{rid}").text
    assert f"reminder {rid}: outcome must be one of reached, left_message, wrong_number, declined" in page
    act(rita, rid, action="call_back", call_back_on="next tuesday")
    assert f"reminder {rid}: call back on must be a date (YYYY-MM-DD)" in rita.get(f"/reminders/{rid}").text
    with pytest.raises(worklist.WorklistError, match="reminder 999999: no such reminder"):
        worklist.add_note(today_app.engine, 999999, "rita", "x")


def test_viewers_cannot_act(today_app: App) -> None:
    client = TestClient(create_app(today_app), base_url="http://testserver")
    assert login(client, "vera").status_code == 303
    rid = worklist_ids(client)[0]
    token = csrf_of(client.get(f"/reminders/{rid}").text)
    resp = client.post(f"/reminders/{rid}/act", data={"csrf_token": token, "action": "note", "note": "x"})
    assert resp.status_code == 403


# -- delivery failures ------------------------------------------------------------------------


def _failed_sends(app: App, ids: list[int], channel: str = "email") -> None:
    now = utcnow()
    with app.engine.begin() as conn:
        for n, rid in enumerate(ids):
            conn.execute(
                SENDS.insert().values(
                    reminder_id=rid,
                    attempt=1,
                    channel=channel,
                    idempotency_key=f"test-{rid}-1-{channel}",
                    status="failed",
                    tries=4,
                    created_at=now - timedelta(hours=n + 1),
                    error="SMTPServerDisconnected: Connection unexpectedly closed",
                )
            )
            conn.execute(
                update(REMINDERS)
                .where(REMINDERS.c.id == rid)
                .values(attempts=1, channel=channel, last_error=f"{channel}: SMTPServerDisconnected")
            )


def test_a_failed_email_shows_as_failed_and_a_down_channel_is_one_banner(
    today_app: App, rita: TestClient
) -> None:
    ids = worklist_ids(rita)[:3]
    _failed_sends(today_app, ids)
    html = rita.get("/reminders?status=worklist").text
    assert html.count('class="alert alert-error outage"') == 1
    assert "E-mail is not working:</strong> 3 reminder(s) could not be sent" in html
    assert html.count('badge-failed">failed<') == 3
    # The rows point at the banner instead of repeating the error once per patient.
    assert html.count("SMTPServerDisconnected") == 1
    assert html.count('<div class="sub">channel down</div>') == 3
    assert 'badge-failed">failed<' in rita.get("/reminders?status=due").text
    detail = rita.get(f"/reminders/{ids[0]}").text
    assert "Connection unexpectedly closed" in detail


def test_one_failed_send_is_not_an_outage(today_app: App, rita: TestClient) -> None:
    ids = worklist_ids(rita)[:1]
    _failed_sends(today_app, ids)
    html = rita.get("/reminders?status=worklist").text
    assert "is not working" not in html
    assert "could not be delivered" in html


# -- CSV export -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["=HYPERLINK(\"http://x\")", "+1 312 555 0100", "-2+3", "@SUM(A1)"])
def test_csv_export_escapes_cells_a_spreadsheet_would_execute(
    today_app: App, rita: TestClient, value: str
) -> None:
    rid = worklist_ids(rita)[0]
    with today_app.engine.begin() as conn:
        case_id = conn.execute(select(REMINDERS.c.case_id).where(REMINDERS.c.id == rid)).scalar_one()
        owner = conn.execute(select(CASES.c.source, CASES.c.patient_id).where(CASES.c.id == case_id)).one()
        conn.execute(
            update(PATIENTS)
            .where(PATIENTS.c.source == owner.source, PATIENTS.c.id == owner.patient_id)
            .values(phone=value)
        )
    body = rita.get("/reminders.csv?status=worklist").text
    rows = {int(r["reminder_id"]): r for r in csv.DictReader(io.StringIO(body))}
    assert rows[rid]["phone"] == "'" + value
    # Nothing else starts with a formula character.
    for row in rows.values():
        assert not any(str(v).startswith(("=", "+", "-", "@")) for v in row.values())


def test_case_page_shows_reminder_attempts_and_a_prom_trajectory(today_app: App, rita: TestClient) -> None:
    from registry_store.tables import PROM_RESPONSES

    rid = worklist_ids(rita)[0]
    _failed_sends(today_app, [rid])
    case_id = reminder(today_app, rid).case_id
    html = rita.get(f"/cases/{case_id}").text
    assert f'href="/reminders/{rid}"' in html
    assert "attempt 1 · email · failed" in html

    with today_app.engine.connect() as conn:
        rows = conn.execute(
            select(
                PROM_RESPONSES.c.case_id,
                PROM_RESPONSES.c.instrument,
                PROM_RESPONSES.c.timepoint,
                PROM_RESPONSES.c.scores,
            ).where(PROM_RESPONSES.c.timepoint.in_(["baseline", "90d", "1y"]))
        ).all()
    by_case: dict[str, set[tuple[str, str]]] = {}
    for r in rows:
        if r.scores:
            by_case.setdefault(r.case_id, set()).add((r.instrument, r.timepoint))
    case_id, points = max(by_case.items(), key=lambda kv: len(kv[1]))
    assert len(points) >= 2
    html = rita.get(f"/cases/{case_id}").text
    chart = html.split('class="chart trajectory"')[1].split("</figure>")[0]
    assert chart.count("<circle") == len(points)
    assert chart.count("<polyline") == len({i for i, _ in points})


def test_answers_taken_by_phone_are_scored_like_any_response(today_app: App, rita: TestClient) -> None:
    from registry_store.tables import PROM_RESPONSES

    with today_app.engine.connect() as conn:
        rid = next(
            r
            for r in worklist_ids(rita)
            if conn.execute(
                select(CASES.c.module)
                .join(REMINDERS, REMINDERS.c.case_id == CASES.c.id)
                .where(REMINDERS.c.id == r)
            ).scalar_one()
            == "lumbar"
        )
    form_page = rita.get(f"/reminders/{rid}/answers?instrument=odi").text
    assert "Oswestry Disability Index" in form_page
    token = csrf_of(form_page)
    # Out of range: refused, naming the reminder and the item; nothing stored.
    bad = {f"item.odi{i}": "1" for i in range(1, 11)} | {"item.odi3": "9"}
    refused = rita.post(f"/reminders/{rid}/answers", data={"csrf_token": token, "instrument": "odi", **bad})
    assert f"reminder {rid}: odi3 must be from 0 to 5" in refused.text
    assert reminder(today_app, rid).status != "completed"

    answers = {f"item.odi{i}": "1" for i in range(1, 11)}  # each section 1 of 5: ODI 20 %
    done = rita.post(
        f"/reminders/{rid}/answers",
        data={"csrf_token": token, "instrument": "odi", "how": "phone", **answers},
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"] == f"/reminders/{rid}"
    assert "Answers saved and scored as response" in rita.get(f"/reminders/{rid}").text
    row = reminder(today_app, rid)
    with today_app.engine.connect() as conn:
        query = select(PROM_RESPONSES).where(PROM_RESPONSES.c.id == row.completed_response_id)
        response = conn.execute(query).one()
    assert (row.status, row.next_attempt_on) == ("completed", None)
    assert (response.case_id, response.timepoint, response.instrument) == (row.case_id, row.timepoint, "odi")
    assert response.scores == {"odi": 20.0}
