"""Reviewer actions over HTTP: CSRF, roles, ignore, add a code and re-process, the audit log."""

from __future__ import annotations

import csv
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from starlette.testclient import TestClient

from mappings.codemaps import BUNDLED, append_code, load_codemap
from registry_adapter.app import App
from registry_store.tables import AUDIT_LOG as AUDIT
from registry_store.tables import CASES, STAGING
from registry_store.tables import ERROR_CAUSES as CAUSES
from registry_store.tables import MAPPING_ERRORS as ERRORS
from tests.review.conftest import UNLISTED_CAUSE, csrf_of
from tests.review.conftest import UNLISTED_CODE_VALUES as VALUES

Client = Callable[[str | None], TestClient]
ROW_LINK = re.compile(r'<a href="/causes/([0-9a-f]{16})">')
ACTIONS = ("ignore", "reopen", "add-code", "reprocess")
CODE_VALUES = {"codemap": "spine-procedures", **{f"value.spine-procedures.{k}": v for k, v in VALUES.items()}}


def _open(app: App, cause_id: str) -> int:
    with app.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).where(ERRORS.c.cause_id == cause_id, ERRORS.c.status == "open")
            ).scalar_one()
        )


def _audit(app: App) -> list[dict[str, object]]:
    with app.engine.connect() as conn:
        # Sign-ins are audited too; these tests look at what reviewers changed.
        query = select(AUDIT).where(AUDIT.c.action.notlike("session.%")).order_by(AUDIT.c.id)
        return [dict(r._mapping) for r in conn.execute(query)]


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
        data={**CODE_VALUES, "value.spine-procedures.category": "made_up", "csrf_token": token},
    )
    assert bad.status_code == 400 and "not one of" in bad.text
    assert 'value="Unlisted procedure, spine"' in bad.text  # what was typed is kept
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

    # Two audited steps: the code-map change, then the re-processing and its outcome.
    add_entry, reprocessed = _audit(review_app)
    assert add_entry["action"] == "codemap.add_code" and add_entry["username"] == "rita"
    assert add_entry["before"] == {"open_errors": 3}
    after = add_entry["after"]
    assert isinstance(after, dict)
    assert after["codemap"] == "spine-procedures" and after["code"] == "22899"
    assert after["values"] == {**VALUES, "rank": "10"}
    assert reprocessed["action"] == "cause.reprocess" and reprocessed["username"] == "rita"
    assert reprocessed["before"] == {"open_errors": 3}
    assert reprocessed["after"] == {
        "outcome": "done",
        "reprocessed": 3,
        "mapped": 3,
        "failed": 0,
        "open_errors": 0,
    }


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
    result = add_code_and_reprocess(
        app, CurrentUser(1, "rita", "reviewer"), UNLISTED_CAUSE, "spine-procedures", dict(VALUES)
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
    assert "1–5 of 9" in client.get("/causes").text  # the sample feed's 9 causes
    token = csrf_of(listing.text)
    done = client.post(f"/causes/{UNLISTED_CAUSE}/add-code", data={**CODE_VALUES, "csrf_token": token})
    assert "3 record(s) re-processed: 3 mapped" in done.text
    assert _open(app, UNLISTED_CAUSE) == 0
    assert "unlisted" in client.get("/cases?q=UNLISTED").text  # case-insensitive search
    assert [e["action"] for e in _audit(app)] == ["codemap.add_code", "cause.reprocess"]


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
            "value.spine-diagnoses.category": "stenosis",
            "value.spine-diagnoses.region": "unspecified",
            "value.spine-diagnoses.label": "Spondylopathy, unspecified",
        },
    )
    assert "2 record(s) re-processed: 2 mapped" in done.text
    assert _open(review_app, cause_id) == 0
    added = [
        r for r in csv.DictReader((site_codemaps / "spine-diagnoses.csv").open()) if r["code"] == "M48.9"
    ]
    assert len(added) == 1 and added[0]["category"] == "stenosis"


def _staged_status(app: App, staging_ids: list[int]) -> list[str]:
    with app.engine.connect() as conn:
        rows = conn.execute(select(STAGING.c.id, STAGING.c.status).where(STAGING.c.id.in_(staging_ids)))
        return [r.status for r in sorted(rows, key=lambda r: r.id)]


def test_reprocess_after_a_fix_made_outside_the_ui(
    client_for: Client, review_app: App, site_codemaps: Path
) -> None:
    # Another cause's records waiting as pending (a sync that staged without mapping): the
    # re-process of one cause in a web request must not map the whole backlog.
    with review_app.engine.begin() as conn:
        others = list(
            conn.execute(
                select(STAGING.c.id).where(STAGING.c.resource_type == "Condition").limit(4)
            ).scalars()
        )
        conn.execute(update(STAGING).where(STAGING.c.id.in_(others)).values(status="pending"))
    append_code(
        load_codemap(site_codemaps / "spine-procedures.yaml"), "cpt", "22899", dict(VALUES), "by hand"
    )
    client = client_for("rita")
    page = client.get(f"/causes/{UNLISTED_CAUSE}")
    assert "Re-process records" in page.text
    done = client.post(f"/causes/{UNLISTED_CAUSE}/reprocess", data={"csrf_token": csrf_of(page.text)})
    assert done.status_code == 200
    assert "3 record(s) re-processed: 3 mapped, 0 failed; 0 open error(s) of this cause left." in done.text
    assert _open(review_app, UNLISTED_CAUSE) == 0
    assert _staged_status(review_app, others) == ["pending"] * 4
    [entry] = _audit(review_app)
    assert entry["action"] == "cause.reprocess" and entry["target"] == f"cause:{UNLISTED_CAUSE}"
    assert entry["after"]["mapped"] == 3  # type: ignore[index]
    # Nothing open any more: refused, with a reason.
    again = client.post(f"/causes/{UNLISTED_CAUSE}/reprocess", data={"csrf_token": csrf_of(page.text)})
    assert again.status_code == 400 and "no open records" in again.text


def test_code_map_change_is_audited_even_when_reprocessing_fails(
    client_for: Client, review_app: App, site_codemaps: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry_adapter.pipeline import Pipeline

    def broken(self: Pipeline, **_: object) -> None:
        raise RuntimeError("database went away")  # a fault we cannot cause for real in a test

    monkeypatch.setattr(Pipeline, "reprocess", broken)
    client = client_for("rita")
    token = csrf_of(client.get(f"/causes/{UNLISTED_CAUSE}").text)
    response = client.post(f"/causes/{UNLISTED_CAUSE}/add-code", data={**CODE_VALUES, "csrf_token": token})
    assert response.status_code == 400
    assert "CPT 22899 was added to spine-procedures, but re-processing failed (RuntimeError)" in response.text
    assert "22899" in (site_codemaps / "spine-procedures.csv").read_text()
    added, failed = _audit(review_app)
    assert added["action"] == "codemap.add_code" and added["after"]["code"] == "22899"  # type: ignore[index]
    assert failed["action"] == "cause.reprocess"
    assert failed["after"] == {"outcome": "failed", "error": "RuntimeError"}
    assert "database went away" not in str(failed)
    monkeypatch.undo()
    # The code is in the map now; re-processing on its own finishes the job.
    twice = client.post(f"/causes/{UNLISTED_CAUSE}/add-code", data={**CODE_VALUES, "csrf_token": token})
    assert twice.status_code == 400 and "is already in spine-procedures; re-process instead" in twice.text
    client.post(f"/causes/{UNLISTED_CAUSE}/reprocess", data={"csrf_token": token})
    assert _open(review_app, UNLISTED_CAUSE) == 0


RESEARCH_MANIFEST = """name: research-procedures
version: "1"
systems:
  cpt: http://www.ama-assn.org/go/cpt
values:
  study_group: [alpha, beta]
  label: str
scope:
  - {system: cpt, from: "22899", to: "22899"}
table: research-procedures.csv
"""


def test_add_code_form_offers_each_maps_own_values(make_app: Callable[..., App], tmp_path: Path) -> None:
    from review.app import create_app
    from tests.review.conftest import fill, login

    site = tmp_path / "site"
    shutil.copytree(BUNDLED, site)
    (site / "research-procedures.yaml").write_text(RESEARCH_MANIFEST)
    (site / "research-procedures.csv").write_text("system,code,match,study_group,label,source\n")
    app = make_app(mappings={"codemaps": str(site)})
    fill(app)
    client = TestClient(create_app(app))
    login(client, "rita")
    page = client.get(f"/causes/{UNLISTED_CAUSE}").text
    fieldsets = re.findall(r'<fieldset class="codemap-values" id="cmv-\d">(.*?)</fieldset>', page, re.S)
    assert len(fieldsets) == 2
    by_map = {re.search(r"Values in ([\w-]+)", f).group(1): f for f in fieldsets}  # type: ignore[union-attr]
    assert 'value="plif_tlif"' in by_map["spine-procedures"] and "alif" not in by_map["research-procedures"]
    assert 'value="alpha"' in by_map["research-procedures"] and "alpha" not in by_map["spine-procedures"]
    assert 'name="value.research-procedures.study_group"' in by_map["research-procedures"]
    assert page.count('type="radio" id="cm-') == 2  # the choice works without script
    done = client.post(
        f"/causes/{UNLISTED_CAUSE}/add-code",
        data={
            **CODE_VALUES,  # the other map's fieldset is posted too and must be ignored
            "codemap": "research-procedures",
            "value.research-procedures.study_group": "beta",
            "value.research-procedures.label": "trial",
            "csrf_token": csrf_of(page),
        },
    )
    assert done.status_code == 200, done.text
    assert "CPT 22899 was added to research-procedures" in done.text
    rows = list(csv.DictReader((site / "research-procedures.csv").open()))
    assert [(r["code"], r["study_group"]) for r in rows] == [("22899", "beta")]
    assert "22899" not in (site / "spine-procedures.csv").read_text()
