"""Re-process the records selected: on a cause's record list and on a record's page, a reviewer
ticks staged records and exactly those go back through the pipeline (real store, real pipeline,
real code-map files)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from mappings.codemaps import append_code, load_codemap
from registry_adapter.app import App
from registry_store.tables import AUDIT_LOG, CASES, MAPPING_ERRORS, STAGING
from review.record_reprocess import MAX_SELECTED
from tests.review.conftest import UNLISTED_CAUSE, csrf_of
from tests.review.conftest import UNLISTED_CODE_VALUES as VALUES

Client = Callable[[str | None], TestClient]
BOX = re.compile(r'name="staging_id" value="(\d+)"')


def _fix_code_map(site_codemaps: Path) -> None:
    """The coder's fix made outside the UI: CPT 22899 added to the site's code map file."""
    cmap = load_codemap(site_codemaps / "spine-procedures.yaml")
    append_code(cmap, "cpt", "22899", dict(VALUES), "test")


def _open_by_record(app: App) -> dict[int, int]:
    with app.engine.connect() as conn:
        rows = conn.execute(
            select(MAPPING_ERRORS.c.staging_id, func.count())
            .where(MAPPING_ERRORS.c.cause_id == UNLISTED_CAUSE, MAPPING_ERRORS.c.status == "open")
            .group_by(MAPPING_ERRORS.c.staging_id)
        )
        return {int(sid): int(n) for sid, n in rows}


def _cause_records(app: App) -> list[int]:
    with app.engine.connect() as conn:
        query = select(MAPPING_ERRORS.c.staging_id).where(MAPPING_ERRORS.c.cause_id == UNLISTED_CAUSE)
        return sorted({int(i) for i in conn.execute(query).scalars()})


def _state(app: App, ids: list[int]) -> dict[int, tuple[str, object]]:
    with app.engine.connect() as conn:
        query = select(STAGING.c.id, STAGING.c.status, STAGING.c.updated_at).where(STAGING.c.id.in_(ids))
        rows = conn.execute(query)
        return {int(r.id): (r.status, r.updated_at) for r in rows}


def _reprocess_audits(app: App) -> list[dict[str, object]]:
    with app.engine.connect() as conn:
        query = select(AUDIT_LOG).where(AUDIT_LOG.c.action == "records.reprocess").order_by(AUDIT_LOG.c.id)
        return [dict(r._mapping) for r in conn.execute(query)]


def test_two_of_three_selected_records_are_remapped_and_the_third_stays(
    client_for: Client, review_app: App, site_codemaps: Path
) -> None:
    records = _cause_records(review_app)
    assert len(records) == 3 and _open_by_record(review_app) == dict.fromkeys(records, 1)
    _fix_code_map(site_codemaps)
    client = client_for("rita")
    page = client.get(f"/causes/{UNLISTED_CAUSE}")
    assert sorted(int(i) for i in BOX.findall(page.text)) == records  # one checkbox per record
    assert 'data-select-all="staging_id"' in page.text and "Re-process selected" in page.text
    with review_app.engine.connect() as conn:
        cases_before = conn.execute(select(func.count()).select_from(CASES)).scalar_one()
    chosen, left = records[:2], records[2]
    untouched_before = _state(review_app, [left])

    done = client.post(
        "/records/reprocess",
        data={
            "csrf_token": csrf_of(page.text),
            "staging_id": [str(i) for i in chosen],
            "back": f"/causes/{UNLISTED_CAUSE}?records=open",
        },
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"] == f"/causes/{UNLISTED_CAUSE}?records=open"
    shown = client.get(done.headers["location"])
    assert "Re-processed 2 records: 2 mapped, 0 still failing" in shown.text
    assert "Re-processed" not in client.get(f"/causes/{UNLISTED_CAUSE}").text  # shown once

    # Exactly the two: their errors resolved and cases made; the third untouched, still open.
    assert _open_by_record(review_app) == {left: 1}
    states = _state(review_app, records)
    assert all(states[i][0] == "mapped" for i in chosen)
    assert _state(review_app, [left]) == untouched_before
    with review_app.engine.connect() as conn:
        made = conn.execute(select(CASES.c.codes)).all()
        cases_after = conn.execute(select(func.count()).select_from(CASES)).scalar_one()
    assert cases_after - cases_before == 2
    assert len([r for r in made if "cpt|22899" in r.codes]) == 2

    [entry] = _reprocess_audits(review_app)
    assert entry["username"] == "rita"
    assert entry["target"] == "records:" + ",".join(map(str, chosen))
    assert entry["before"] == {"staging_ids": chosen, "open_errors": 2}
    assert entry["after"] == {
        "outcome": "done",
        "selected": 2,
        "reprocessed": 2,
        "mapped": 2,
        "still_failing": 0,
        "other": 0,
        "skipped": 0,
        # The new cases' own warning (no stay yet), not this cause: counted, not hidden.
        "open_errors": 2,
    }
    with review_app.engine.connect() as conn:
        codes = conn.execute(
            select(MAPPING_ERRORS.c.code).where(
                MAPPING_ERRORS.c.staging_id.in_(chosen), MAPPING_ERRORS.c.status == "open"
            )
        ).scalars()
        assert sorted(codes) == ["case.no_discharge"] * 2


def test_without_the_fix_the_selected_record_is_still_failing_from_its_own_page(
    client_for: Client, review_app: App
) -> None:
    first = _cause_records(review_app)[0]
    client = client_for("rita")
    page = client.get(f"/records/{first}")
    assert f'name="staging_id" value="{first}"' in page.text
    done = client.post(
        "/records/reprocess",
        data={"csrf_token": csrf_of(page.text), "staging_id": str(first), "back": f"/records/{first}"},
    )
    assert done.status_code == 200 and done.url.path == f"/records/{first}"
    assert "Re-processed 1 record: 0 mapped, 1 still failing; 1 open error(s) left" in done.text
    assert _open_by_record(review_app)[first] == 1


def test_a_viewer_is_refused_and_sees_no_checkboxes(client_for: Client, review_app: App) -> None:
    records = _cause_records(review_app)
    client = client_for("vera")
    page = client.get(f"/causes/{UNLISTED_CAUSE}")
    assert page.status_code == 200 and not BOX.search(page.text)
    assert not BOX.search(client.get(f"/records/{records[0]}").text)
    before = _state(review_app, records)
    refused = client.post(
        "/records/reprocess",
        data={"csrf_token": csrf_of(page.text), "staging_id": [str(i) for i in records]},
    )
    assert refused.status_code == 403
    assert _state(review_app, records) == before and _reprocess_audits(review_app) == []


def test_missing_or_forged_csrf_token_is_refused(client_for: Client, review_app: App) -> None:
    records = _cause_records(review_app)
    client = client_for("rita")
    before = _state(review_app, records)
    for data in ({}, {"csrf_token": "forged"}):
        response = client.post("/records/reprocess", data={**data, "staging_id": [str(i) for i in records]})
        assert response.status_code == 403
    assert _state(review_app, records) == before and _reprocess_audits(review_app) == []


def test_ids_are_bounded_and_must_exist(client_for: Client, review_app: App) -> None:
    records = _cause_records(review_app)
    client = client_for("rita")
    token = csrf_of(client.get(f"/causes/{UNLISTED_CAUSE}").text)
    before = _state(review_app, records)

    def post(ids: list[str], back: str = f"/causes/{UNLISTED_CAUSE}") -> Any:
        return client.post(
            "/records/reprocess",
            data={"csrf_token": token, "staging_id": ids, "back": back},
            follow_redirects=False,
        )

    bad = post([str(records[0]), "12abc"])
    assert bad.status_code == 400 and "not a staged record id: &#39;12abc&#39;" in bad.text
    unknown = post([str(records[0]), "999999"])
    assert unknown.status_code == 400 and "no staged record with id 999999" in unknown.text
    too_many = post([str(i) for i in range(1, MAX_SELECTED + 2)])
    assert too_many.status_code == 400
    assert f"at most {MAX_SELECTED} records" in too_many.text
    none = post([], back="https://evil.example/")
    # Nothing ticked: back to a page of ours (never the form's foreign address) with the reason.
    assert none.status_code == 303 and none.headers["location"] == "/causes"
    assert "Select at least one record" in client.get("/causes/" + UNLISTED_CAUSE).text
    assert _state(review_app, records) == before and _reprocess_audits(review_app) == []


@pytest.mark.postgres
def test_reprocess_selected_on_postgresql(
    make_review_app: Callable[..., App], pg_url: str, site_codemaps: Path
) -> None:
    from review.app import create_app
    from tests.review.conftest import login

    app = make_review_app(pg_url)
    records = _cause_records(app)
    _fix_code_map(site_codemaps)
    client = TestClient(create_app(app))
    assert login(client, "rita").status_code == 303
    page = client.get(f"/causes/{UNLISTED_CAUSE}")
    done = client.post(
        "/records/reprocess",
        data={"csrf_token": csrf_of(page.text), "staging_id": [str(records[0]), str(records[2])]},
    )
    assert done.url.path == f"/records/{records[0]}"  # no "back" sent: the first record's page
    assert "Re-processed 2 records: 2 mapped, 0 still failing" in done.text
    assert _open_by_record(app) == {records[1]: 1}
