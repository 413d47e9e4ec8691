"""Pages over HTTP: pagination and filters, PHI masking, reminders and CSV, feed health, metrics."""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from registry_adapter.app import App
from registry_store.errors import replace_errors
from registry_store.tables import AUDIT_LOG as AUDIT
from registry_store.tables import CASES, REMINDERS, STAGING
from registry_store.tables import HL7_ACKS as ACKS
from registry_store.tables import MAPPING_ERRORS as ERRORS
from registry_types.issues import Issue
from review.raw_view import MASK, mask_phi, render_raw
from scheduler.channels.worklist import COLUMNS as WORKLIST_COLUMNS
from scheduler.channels.worklist import export_csv

Client = Callable[[str | None], TestClient]
ROW = re.compile(r'<a href="/causes/([0-9a-f]{16})">')
CASE_ROW = re.compile(r'<a href="/cases/([^"]+)">')


def _seed_causes(app: App, n: int) -> None:
    """``n`` extra causes on one staged Procedure, via the real error API."""
    with app.engine.begin() as conn:
        staged = conn.execute(
            select(STAGING.c.id, STAGING.c.resource_id).where(STAGING.c.resource_type == "Procedure").limit(1)
        ).one()
        replace_errors(
            conn,
            staging_id=staged.id,
            source="sample",
            resource_type="Procedure",
            resource_id=staged.resource_id,
            mapping="seeded",
            issues=[
                Issue(code="seed.unknown", message="seeded", field=f"f{i}", value=f"X{i:03d}")
                for i in range(n)
            ],
        )


def test_causes_are_paged_in_order_and_filters_survive_paging(client_for: Client, review_app: App) -> None:
    _seed_causes(review_app, 12)  # + 9 causes from the sample feed = 21, 5 per page
    client = client_for("vera")
    first = client.get("/causes")
    assert "1–5 of 21" in first.text and "Page 1 of 5" in first.text
    seen: list[str] = []
    for page in range(1, 6):
        seen += ROW.findall(client.get(f"/causes?page={page}").text)
    assert len(seen) == 21 == len(set(seen))
    assert seen[0] == "6b3b8cb49b505af2"  # 3 records: the biggest cause comes first
    assert "21–21 of 21" in client.get("/causes?page=99").text  # past the end: the last page

    filtered = client.get("/causes?mapping=seeded&q=X00")
    assert "1–5 of 10" in filtered.text  # X000..X009
    assert 'href="?mapping=seeded&amp;q=X00&amp;page=2"' in filtered.text
    assert "1–5 of 12" in client.get("/causes?code=seed.unknown").text
    assert "No open mapping errors match" in client.get("/causes?q=nothing-like-this").text
    # Unknown filter values are dropped, not passed to SQL.
    assert "1–5 of 21" in client.get("/causes?mapping=%27%3Bdrop&status=bogus").text


def test_search_treats_like_wildcards_literally(client_for: Client, review_app: App) -> None:
    _seed_causes(review_app, 3)
    client = client_for("vera")
    assert "No open mapping errors match" in client.get("/causes?q=%25").text
    assert "No open mapping errors match" in client.get("/causes?q=X_0").text


def test_cases_are_paged_without_gaps(client_for: Client, review_app: App) -> None:
    client = client_for("vera")
    first = client.get("/cases")
    assert "1–5 of 40" in first.text
    ids: list[str] = []
    for page in range(1, 9):
        ids += CASE_ROW.findall(client.get(f"/cases?page={page}").text)
    assert len(ids) == 40 == len(set(ids))
    assert "1–5 of" in client.get("/cases?module=lumbar").text
    assert "No cases match" in client.get("/cases?q=zzz").text


def test_case_detail_shows_procedures_diagnoses_proms_and_reminders(
    client_for: Client, review_app: App
) -> None:
    with review_app.engine.begin() as conn:
        case = conn.execute(select(CASES).where(CASES.c.id == "sample:proc-0001")).one()
        conn.execute(
            REMINDERS.insert().values(
                case_id=case.id,
                timepoint="90d",
                due_date=date(2024, 6, 17),
                window_start=date(2024, 5, 18),
                window_end=date(2024, 9, 15),
                status="sent",
                attempts=2,
                channel="email",
            )
        )
    vera = client_for("vera").get("/cases/sample:proc-0001")
    assert vera.status_code == 200
    assert "proc-0001" in vera.text and "cpt|63030" in vera.text
    assert "radiculopathy" in vera.text and "M51.16" in vera.text
    assert "90d" in vera.text and "email" in vera.text
    assert "Hidden for your role" in vera.text  # MRN and birth date masked for a viewer
    rita = client_for("rita").get("/cases/sample:proc-0001")
    assert "Hidden for your role" not in rita.text
    assert client_for("vera").get("/cases/sample:nope").status_code == 404


def test_case_page_shows_why_it_was_withdrawn_and_what_reminders_count_from(
    client_for: Client, review_app: App
) -> None:
    note = "due date moved from 2024-06-13 to 2024-06-17 (anchor: discharge) after 1 attempt(s) sent"
    with review_app.engine.begin() as conn:
        conn.execute(
            CASES.update()
            .where(CASES.c.id == "sample:proc-0001")
            .values(status="withdrawn", status_reason="withdrawn by Dana: consent withdrawn")
        )
        for tp, anchor, extra in (("90d", "discharge", {"note": note}), ("1y", "surgery_fallback", {})):
            conn.execute(
                REMINDERS.insert().values(
                    case_id="sample:proc-0001",
                    timepoint=tp,
                    due_date=date(2024, 6, 17),
                    window_start=date(2024, 5, 18),
                    window_end=date(2024, 9, 15),
                    status="cancelled",
                    cancel_reason="case_withdrawn",
                    attempts=1,
                    anchor=anchor,
                    **extra,
                )
            )
    page = html.unescape(client_for("vera").get("/cases/sample:proc-0001").text)
    assert "withdrawn by Dana: consent withdrawn" in page
    assert "Counts from" in page and "surgery (no usable discharge date)" in page
    assert note in page and "case_withdrawn" in page


NARRATIVE_SECRETS = ("Kim Mockridge lives at 12 Elm Row", "Featherstonehaugh", "2031-04-05", "calls before 9")


def test_phi_is_masked_for_viewers_in_raw_records(client_for: Client, review_app: App) -> None:
    with review_app.engine.begin() as conn:
        patient = conn.execute(
            select(STAGING.c.id, STAGING.c.raw).where(STAGING.c.resource_id == "pat-0006")
        ).one()
        # What a real EHR adds: narrative, extensions, dates of death, notes.
        raw = json.loads(patient.raw)
        raw["text"] = {"status": "generated", "div": f"<div>{NARRATIVE_SECRETS[0]}</div>"}
        raw["extension"] = [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
                "valueString": NARRATIVE_SECRETS[1],
            }
        ]
        raw["deceasedDateTime"] = NARRATIVE_SECRETS[2]
        raw["note"] = [{"text": NARRATIVE_SECRETS[3]}]
        conn.execute(STAGING.update().where(STAGING.c.id == patient.id).values(raw=json.dumps(raw).encode()))
        replace_errors(
            conn,
            staging_id=patient.id,
            source="sample",
            resource_type="Patient",
            resource_id="pat-0006",
            mapping="patient",
            issues=[Issue(code="patient.test", message="test", field="gender", value="female")],
        )
        cause = conn.execute(select(ERRORS.c.cause_id).where(ERRORS.c.code == "patient.test")).scalar_one()
    viewer = client_for("vera").get(f"/causes/{cause}").text
    reviewer = html.unescape(client_for("rita").get(f"/causes/{cause}").text)
    for secret in ("Mockridge", "1958-03-06", "DEMO-100006", "patient6@example.invalid", *NARRATIVE_SECRETS):
        assert secret not in html.unescape(viewer)
        assert secret in reviewer
    # Structure stays readable: which extension, which identifier system, the record's meta.
    assert "patient-mothersMaidenName" in viewer and "urn:oid:2.16.840.1.113883.3.9999.1" in viewer
    assert "2025-11-01T02:00:00Z" in viewer
    marked = re.findall(r"<mark>(.*?)</mark>", html.unescape(viewer))
    assert [m.strip() for m in marked] == ['"gender": "female",']


def test_masking_is_an_allow_list() -> None:
    response = {
        "resourceType": "QuestionnaireResponse",
        "id": "qr-1",
        "meta": {"lastUpdated": "2025-11-01T02:00:00Z", "profile": ["http://example.org/p"]},
        "text": {"status": "generated", "div": "<div>Jane Doe, 12 Elm Row</div>"},
        "questionnaire": "https://example.org/Questionnaire/odi",
        "status": "completed",
        "subject": {"reference": "Patient/p1", "display": "Jane Doe"},
        "authored": "2024-06-19T10:00:00-05:00",
        "extension": [{"url": "http://example.org/ext/nickname", "valueString": "Janey"}],
        "item": [
            {"linkId": "odi-1", "text": "Pain intensity", "answer": [{"valueInteger": 3}]},
            {"linkId": "free", "answer": [{"valueString": "my husband John drives me"}]},
            {"linkId": "when", "answer": [{"valueDate": "2024-05-01"}, {"valueDate": "yesterday"}]},
            {
                "linkId": "coded",
                "answer": [{"valueCoding": {"system": "urn:s", "code": "a", "display": "Agree"}}],
            },
        ],
        "note": [{"text": "called her at home", "time": "2024-06-20"}],
        "deceasedBoolean": True,
        "multipleBirthInteger": 2,
    }
    masked = mask_phi(response)
    assert masked["meta"] == response["meta"]
    assert masked["text"] == {"status": "generated", "div": MASK}
    assert masked["questionnaire"] == response["questionnaire"] and masked["status"] == "completed"
    assert masked["subject"] == {"reference": "Patient/p1", "display": MASK}
    assert masked["authored"] == response["authored"]
    assert masked["extension"] == [{"url": "http://example.org/ext/nickname", "valueString": MASK}]
    items = masked["item"]
    assert items[0] == {"linkId": "odi-1", "text": MASK, "answer": [{"valueInteger": 3}]}
    assert items[1]["answer"] == [{"valueString": MASK}]
    assert items[2]["answer"] == [{"valueDate": "2024-05-01"}, {"valueDate": MASK}]
    assert items[3]["answer"][0]["valueCoding"] == {"system": "urn:s", "code": "a", "display": "Agree"}
    assert masked["note"] == [{"text": MASK, "time": MASK}]  # 'time' is not a date key we know
    assert masked["deceasedBoolean"] == MASK and masked["multipleBirthInteger"] == MASK
    # The offending field is still marked when its value is masked.
    lines = render_raw(
        json.dumps(response).encode(), masked=True, field="item.answer.valueString", value=None
    )
    assert lines is not None
    assert [line.text.strip() for line in lines if line.marked] == [f'"valueString": "{MASK}"'] * 2


def test_mask_and_highlight() -> None:
    resource = {
        "resourceType": "Procedure",
        "identifier": [{"system": "urn:x", "value": "MRN1"}],
        "subject": {"reference": "Patient/p1", "display": "Jane Doe"},
        "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "22899"}]},
        "contained": [{"resourceType": "Patient", "name": [{"family": "Doe"}], "birthDate": "1950-01-01"}],
    }
    masked = mask_phi(resource)
    assert masked["identifier"] == [{"system": "urn:x", "value": MASK}]
    assert masked["subject"] == {"reference": "Patient/p1", "display": MASK}
    assert masked["contained"][0]["name"] == MASK and masked["contained"][0]["birthDate"] == MASK
    lines = render_raw(json.dumps(resource).encode(), masked=True, field="codings", value="cpt|22899")
    assert lines is not None
    assert [line.text.strip() for line in lines if line.marked] == ['"code": "22899"']
    assert render_raw(b"{not json", masked=True, field="", value=None) is None
    unmasked = render_raw(b"{not json", masked=False, field="", value=None)
    assert unmasked is not None and unmasked[0].text == "{not json"


def _reminder(case_id: str, tp: str, status: str, start: date, end: date) -> dict[str, object]:
    return {
        "case_id": case_id,
        "timepoint": tp,
        "due_date": start,
        "window_start": start,
        "window_end": end,
        "status": status,
    }


def test_reminder_worklist_and_csv_export(client_for: Client, review_app: App) -> None:
    today = datetime.now(review_app.settings.site.tz).date()
    with review_app.engine.begin() as conn:
        conn.execute(
            REMINDERS.insert(),
            [
                _reminder(
                    "sample:proc-0001",
                    "90d",
                    "scheduled",
                    today - timedelta(days=3),
                    today + timedelta(days=60),
                ),
                _reminder(
                    "sample:proc-0002", "90d", "sent", today - timedelta(days=30), today + timedelta(days=30)
                ),
                _reminder(
                    "sample:proc-0003",
                    "1y",
                    "scheduled",
                    today + timedelta(days=30),
                    today + timedelta(days=90),
                ),
                _reminder(
                    "sample:proc-0004",
                    "90d",
                    "completed",
                    today - timedelta(days=99),
                    today - timedelta(days=1),
                ),
                _reminder(
                    "sample:proc-0005",
                    "90d",
                    "expired",
                    today - timedelta(days=200),
                    today - timedelta(days=20),
                ),
            ],
        )
    client = client_for("vera")
    due = client.get("/reminders")
    assert "Due (2)" in due.text and "Completed (1)" in due.text and "Expired (1)" in due.text
    assert "sample:proc-0001" in due.text and "sample:proc-0002" in due.text
    assert "sample:proc-0003" not in due.text  # its window opens later
    assert "sample:proc-0004" in client.get("/reminders?status=completed").text

    export = client.get("/reminders.csv?status=due")
    assert export.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert sorted(r["case_id"] for r in rows) == ["sample:proc-0001", "sample:proc-0002"]
    assert tuple(rows[0]) == WORKLIST_COLUMNS  # the CLI worklist's columns
    assert {r["mrn"] for r in rows} == {MASK}  # contacts masked for a viewer
    reviewer_rows = list(
        csv.DictReader(io.StringIO(client_for("rita").get("/reminders.csv?status=due").text))
    )
    assert reviewer_rows[0]["mrn"].startswith("DEMO-") and "email" in reviewer_rows[0]
    assert reviewer_rows[0]["procedure_id"].startswith("proc-000")
    with review_app.engine.connect() as conn:
        exports = (
            conn.execute(select(AUDIT.c.username).where(AUDIT.c.action == "reminders.export")).scalars().all()
        )
    assert sorted(exports) == ["rita", "vera"]


def test_worklist_tab_shows_contacts_by_role_and_failed_sends(
    client_for: Client, review_app: App, tmp_path: Path
) -> None:
    today = datetime.now(review_app.settings.site.tz).date()
    start, end = today - timedelta(days=10), today + timedelta(days=50)
    with review_app.engine.begin() as conn:
        [kim] = conn.execute(select(CASES.c.id).where(CASES.c.patient_id == "pat-0006")).scalars()
        other, fine = conn.execute(
            select(CASES.c.id).where(CASES.c.patient_id != "pat-0006").order_by(CASES.c.id).limit(2)
        ).scalars()
        for row in (
            {**_reminder(kim, "90d", "sent", start, end), "attempts": 1, "channel": "worklist"},
            {
                **_reminder(other, "90d", "sent", start, end),
                "attempts": 3,
                "channel": "email",
                "last_error": "email: 550 mailbox unavailable",
            },
            # Sent fine by email: not for coordinators.
            {**_reminder(fine, "90d", "sent", start, end), "attempts": 1, "channel": "email"},
        ):
            conn.execute(REMINDERS.insert().values(**row))
    viewer = client_for("vera").get("/reminders?status=worklist")
    assert "Worklist (2)" in viewer.text
    assert kim in viewer.text and other in viewer.text
    assert fine not in viewer.text
    assert "550 mailbox unavailable" in viewer.text
    assert "patient6@example.invalid" not in viewer.text and "DEMO-100006" not in viewer.text
    assert MASK in viewer.text
    reviewer = client_for("rita").get("/reminders?status=worklist")
    assert "patient6@example.invalid" in reviewer.text and "DEMO-100006" in reviewer.text

    # The web export is the CLI's (export_csv), byte for byte, for a role that sees contacts.
    cli_file = tmp_path / "worklist.csv"
    with review_app.engine.connect() as conn:
        export_csv(conn, cli_file)
    web = client_for("rita").get("/reminders.csv?status=worklist")
    assert web.content == cli_file.read_bytes()
    masked = list(csv.DictReader(io.StringIO(client_for("vera").get("/reminders.csv?status=worklist").text)))
    assert sorted(r["case_id"] for r in masked) == sorted([kim, other])
    assert {r["mrn"] for r in masked} == {MASK} and {r["email"] for r in masked} <= {MASK, ""}
    assert {r["case_id"]: r["last_error"] for r in masked}[other] == "email: 550 mailbox unavailable"


def test_missing_baseline_cases_are_listed(client_for: Client, review_app: App) -> None:
    today = datetime.now(review_app.settings.site.tz).date()
    with review_app.engine.begin() as conn:
        conn.execute(
            REMINDERS.insert(),
            [
                _reminder(
                    "sample:proc-0001",
                    "baseline",
                    "missing",
                    today - timedelta(days=200),
                    today - timedelta(days=110),
                ),
                _reminder(
                    "sample:proc-0002",
                    "baseline",
                    "completed",
                    today - timedelta(days=200),
                    today - timedelta(days=110),
                ),
                _reminder(
                    "sample:proc-0003",
                    "baseline",
                    "open",
                    today - timedelta(days=20),
                    today + timedelta(days=5),
                ),
            ],
        )
    client = client_for("vera")
    page = client.get("/reminders?status=missing")
    assert "Missing (1)" in page.text and "Open (1)" in page.text
    assert "sample:proc-0001" in page.text and "sample:proc-0002" not in page.text
    assert "sample:proc-0003" in client.get("/reminders?status=open").text
    cases = client.get("/cases?baseline=missing")
    assert "1–1 of 1" in cases.text and CASE_ROW.findall(cases.text) == ["sample%3Aproc-0001"]
    assert CASE_ROW.findall(client.get("/cases?baseline=open").text) == ["sample%3Aproc-0003"]
    rows = list(csv.DictReader(io.StringIO(client.get("/reminders.csv?status=missing").text)))
    assert [(r["case_id"], r["timepoint"], r["status"]) for r in rows] == [
        ("sample:proc-0001", "baseline", "missing")
    ]


def test_feed_health_shows_runs_acks_and_chart(client_for: Client, review_app: App) -> None:
    with review_app.engine.begin() as conn:
        conn.execute(
            ACKS.insert(),
            [
                {
                    "received_at": datetime.now(UTC),
                    "source": "adt",
                    "sending_facility": "EPIC",
                    "control_id": "MSG00001",
                    "message_type": "ADT^A08",
                    "ack_code": "AA",
                },
                {
                    "received_at": datetime.now(UTC),
                    "source": "adt",
                    "sending_facility": "EPIC",
                    "control_id": "MSG00002",
                    "message_type": "ORU^R01",
                    "ack_code": "AE",
                    "error": "PID-3 missing",
                },
            ],
        )
    page = client_for("vera").get("/feeds")
    assert page.status_code == 200
    assert "sample" in page.text and "succeeded" in page.text
    assert "MSG00002" in page.text and "AE 1" in page.text and "AA 1" in page.text
    assert "<svg" in page.text and 'class="bar-records"' in page.text
    assert "271 received" in page.text  # tooltip of tonight's bar


def test_healthz_and_metrics_need_no_login(client_for: Client) -> None:
    client = client_for(None)
    assert client.get("/healthz").json()["status"] == "ok"
    text = client.get("/metrics").text
    assert 'registry_mapping_errors{status="open"} 12.0' in text
    assert "registry_cases 40.0" in text
    assert 'registry_last_sync_success{source="sample"} 1.0' in text
    assert 'registry_staged_records{status="mapped"}' in text
    assert re.search(r'registry_last_sync_age_seconds\{source="sample"\} \d', text)


def test_pages_send_security_headers(client_for: Client) -> None:
    response = client_for("vera").get("/causes")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize("path", ["/causes/not-a-cause", "/causes/0123456789abcdef", "/cases/x:y"])
def test_unknown_ids_are_404(client_for: Client, path: str) -> None:
    assert client_for("vera").get(path).status_code == 404


@pytest.mark.parametrize("page", [str(10**40), "0", "-1", "abc", "²", "1000001"])
@pytest.mark.parametrize("path", ["/causes", "/cases", "/reminders", "/audit"])
def test_out_of_range_page_is_a_plain_400(client_for: Client, path: str, page: str) -> None:
    client = client_for("adam")
    response = client.get(path, params={"page": page})
    assert response.status_code == 400
    assert "page must be a whole number from 1 to 1,000,000." in response.text
    assert "Traceback" not in response.text and "Overflow" not in response.text
