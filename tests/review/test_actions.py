"""Reviewer actions over HTTP: CSRF, roles, ignore, add a code and re-process, the audit log."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from mappings.codemaps import BUNDLED
from registry_adapter.app import App
from registry_store.errors import ERRORS
from review.queries import AUDIT, CASES, CAUSES
from tests.review.conftest import UNLISTED_CAUSE, csrf_of

Client = Callable[[str | None], TestClient]
ROW_LINK = re.compile(r'<a href="/causes/([0-9a-f]{16})">')
ACTIONS = ("ignore", "reopen", "add-code")
CODE_VALUES = {
    "codemap": "spine-procedures",
    "value.category": "other_lumbar_fusion",
    "value.module": "lumbar",
    "value.role": "index",
    "value.rank": "10",
    "value.revision": "false",
    "value.label": "Unlisted procedure, spine",
}


def _open(app: App, cause_id: str) -> int:
    with app.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).where(ERRORS.c.cause_id == cause_id, ERRORS.c.status == "open")
            ).scalar_one()
        )


def _audit(app: App) -> list[dict[str, object]]:
    with app.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(AUDIT).order_by(AUDIT.c.id))]


@pytest.mark.parametrize("action", ACTIONS)
def test_post_without_csrf_token_is_refused(client_for: Client, review_app: App, action: str) -> None:
    client = client_for("rita")
    response = client.post(f"/causes/{UNLISTED_CAUSE}/{action}", data={"reason": "x", **CODE_VALUES})
    assert response.status_code == 403
    wrong = client.post(f"/causes/{UNLISTED_CAUSE}/{action}", data={"reason": "x", "csrf_token": "forged"})
    assert wrong.status_code == 403
    assert _open(review_app, UNLISTED_CAUSE) == 3
    assert _audit(review_app) == []


def test_login_and_logout_need_the_token_too(client_for: Client) -> None:
    client = client_for(None)
    assert (
        client.post("/login", data={"username": "rita", "password": "reviewer-pass-123"}).status_code == 403
    )
    signed_in = client_for("rita")
    assert signed_in.post("/logout", data={}).status_code == 403


def test_viewer_sees_no_actions_and_cannot_post(client_for: Client, review_app: App) -> None:
    client = client_for("vera")
    page = client.get(f"/causes/{UNLISTED_CAUSE}")
    assert page.status_code == 200
    for action in ACTIONS:
        assert f"/{action}" not in page.text
    token = csrf_of(page.text)  # the sign-out form's token: valid, but the role is not enough
    for action in ACTIONS:
        response = client.post(
            f"/causes/{UNLISTED_CAUSE}/{action}", data={"csrf_token": token, "reason": "x", **CODE_VALUES}
        )
        assert response.status_code == 403, action
    assert _open(review_app, UNLISTED_CAUSE) == 3
    assert _audit(review_app) == []


def test_reviewer_ignores_a_cause_with_a_reason(client_for: Client, review_app: App) -> None:
    client = client_for("rita")
    page = client.get(f"/causes/{UNLISTED_CAUSE}")
    token = csrf_of(page.text)
    refused = client.post(f"/causes/{UNLISTED_CAUSE}/ignore", data={"csrf_token": token, "reason": "  "})
    assert refused.status_code == 400 and "give a reason" in refused.text

    done = client.post(
        f"/causes/{UNLISTED_CAUSE}/ignore", data={"csrf_token": token, "reason": "research codes, not ours"}
    )
    assert done.status_code == 200 and "marked ignored (3 open error(s) ignored)" in done.text
    assert _open(review_app, UNLISTED_CAUSE) == 0
    assert UNLISTED_CAUSE not in client.get("/causes").text
    assert UNLISTED_CAUSE in client.get("/causes?status=ignored").text
    with review_app.engine.connect() as conn:
        decision = conn.execute(select(CAUSES).where(CAUSES.c.cause_id == UNLISTED_CAUSE)).one()
    assert (decision.status, decision.reason, decision.updated_by) == (
        "ignored",
        "research codes, not ours",
        "rita",
    )
    [entry] = _audit(review_app)
    assert entry["username"] == "rita" and entry["action"] == "cause.ignore"
    assert entry["target"] == f"cause:{UNLISTED_CAUSE}"
    assert entry["before"]["counts"]["open"] == 3  # type: ignore[index]
    assert entry["after"]["counts"] == {"open": 0, "ignored": 3, "resolved": 0}  # type: ignore[index]

    client.post(f"/causes/{UNLISTED_CAUSE}/reopen", data={"csrf_token": token})
    assert _open(review_app, UNLISTED_CAUSE) == 3
    assert [e["action"] for e in _audit(review_app)] == ["cause.ignore", "cause.reopen"]


def test_add_code_to_the_site_code_map_and_reprocess(
    client_for: Client, review_app: App, site_codemaps: Path
) -> None:
    bundled_before = (BUNDLED / "spine-procedures.csv").read_text()
    with review_app.engine.connect() as conn:
        cases_before = conn.execute(select(func.count()).select_from(CASES)).scalar_one()
    client = client_for("rita")
    page = client.get(f"/causes/{UNLISTED_CAUSE}")
    assert "Add CPT 22899 to a code map" in page.text
    assert 'value="other_lumbar_fusion"' in page.text  # the allowed categories are offered
    token = csrf_of(page.text)

    bad = client.post(
        f"/causes/{UNLISTED_CAUSE}/add-code",
        data={**CODE_VALUES, "value.category": "made_up", "csrf_token": token},
    )
    assert bad.status_code == 400 and "not one of" in bad.text
    assert _open(review_app, UNLISTED_CAUSE) == 3

    done = client.post(f"/causes/{UNLISTED_CAUSE}/add-code", data={**CODE_VALUES, "csrf_token": token})
    assert done.status_code == 200, done.text
    assert (
        "CPT 22899 was added to spine-procedures and 3 record(s) re-processed: 3 mapped, 0 failed"
        in done.text
    )
    assert "re-processed" not in client.get(f"/causes/{UNLISTED_CAUSE}").text  # shown once
    assert _open(review_app, UNLISTED_CAUSE) == 0
    assert UNLISTED_CAUSE not in client.get("/causes").text

    rows = list(csv.DictReader((site_codemaps / "spine-procedures.csv").open()))
    added = [r for r in rows if r["code"] == "22899"]
    assert len(added) == 1 and added[0]["category"] == "other_lumbar_fusion"
    assert "rita" in added[0]["source"]
    assert (BUNDLED / "spine-procedures.csv").read_text() == bundled_before

    with review_app.engine.connect() as conn:
        cases_after = conn.execute(select(func.count()).select_from(CASES)).scalar_one()
        case_rows = conn.execute(select(CASES.c.id, CASES.c.codes)).all()
    unlisted = [r.id for r in case_rows if "cpt|22899" in r.codes]
    assert cases_after > cases_before and unlisted
    assert unlisted[0] in client.get("/cases?q=unlisted").text

    [entry] = _audit(review_app)
    assert entry["action"] == "codemap.add_code" and entry["username"] == "rita"
    assert entry["before"] == {"open_errors": 3}
    after = entry["after"]
    assert isinstance(after, dict)
    assert after["codemap"] == "spine-procedures" and after["code"] == "22899" and after["open_errors"] == 0


def test_add_code_copies_a_bundled_map_into_the_site_folder(
    make_app: Callable[..., App], tmp_path: Path
) -> None:
    from review.actions import add_code_and_reprocess
    from review.auth import CurrentUser
    from tests.review.conftest import fill

    site = tmp_path / "empty-site"
    site.mkdir()
    app = make_app(mappings={"codemaps": str(site)})
    fill(app)
    bundled_before = (BUNDLED / "spine-procedures.csv").read_text()
    values = {k.removeprefix("value."): v for k, v in CODE_VALUES.items() if k.startswith("value.")}
    result = add_code_and_reprocess(
        app, CurrentUser(1, "rita", "reviewer"), UNLISTED_CAUSE, "spine-procedures", values
    )
    assert result["open_errors"] == 0
    assert (site / "spine-procedures.yaml").exists()
    assert "22899" in (site / "spine-procedures.csv").read_text()
    assert (BUNDLED / "spine-procedures.csv").read_text() == bundled_before


def test_add_code_is_only_offered_for_unmapped_codes(client_for: Client) -> None:
    client = client_for("rita")
    page = client.get("/causes?q=no_index")
    cause_id = page.text.split('href="/causes/')[1][:16]
    detail = client.get(f"/causes/{cause_id}")
    assert "add-code" not in detail.text and "/ignore" in detail.text
    token = csrf_of(detail.text)
    refused = client.post(f"/causes/{cause_id}/add-code", data={**CODE_VALUES, "csrf_token": token})
    assert refused.status_code == 400 and "not a code missing" in refused.text


@pytest.mark.postgres
def test_fix_a_cause_on_postgresql(make_review_app: Callable[..., App], pg_url: str) -> None:
    from review.app import create_app
    from tests.review.conftest import login

    app = make_review_app(pg_url)
    client = TestClient(create_app(app))
    assert login(client, "rita").status_code == 303
    listing = client.get("/causes?q=22899")
    assert "1–1 of 1" in listing.text and UNLISTED_CAUSE in listing.text
    assert "1–5 of 6" in client.get("/causes").text
    token = csrf_of(listing.text)
    done = client.post(f"/causes/{UNLISTED_CAUSE}/add-code", data={**CODE_VALUES, "csrf_token": token})
    assert "3 record(s) re-processed: 3 mapped" in done.text
    assert _open(app, UNLISTED_CAUSE) == 0
    assert "unlisted" in client.get("/cases?q=UNLISTED").text  # case-insensitive search
    assert [e["action"] for e in _audit(app)] == ["codemap.add_code"]


def test_add_an_icd10_code_in_its_dotted_form(
    client_for: Client, review_app: App, site_codemaps: Path
) -> None:
    client = client_for("rita")
    listing = client.get("/causes?q=M48.9")
    cause_id = ROW_LINK.findall(listing.text)[0]
    page = client.get(f"/causes/{cause_id}")
    assert "Add ICD10CM M48.9 to a code map" in page.text
    done = client.post(
        f"/causes/{cause_id}/add-code",
        data={
            "csrf_token": csrf_of(page.text),
            "codemap": "spine-diagnoses",
            "value.category": "stenosis",
            "value.region": "unspecified",
            "value.label": "Spondylopathy, unspecified",
        },
    )
    assert "2 record(s) re-processed: 2 mapped" in done.text
    assert _open(review_app, cause_id) == 0
    added = [
        r for r in csv.DictReader((site_codemaps / "spine-diagnoses.csv").open()) if r["code"] == "M48.9"
    ]
    assert len(added) == 1 and added[0]["category"] == "stenosis"
