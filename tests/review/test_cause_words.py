"""Cause pages in a coordinator's words: the catalogue's title, explanation, who fixes it and
the next step; "Re-process" only where it can help; a copyable IT-ticket block with ids and
counts only. Real store filled from the sample feed; pages through the test client."""

from __future__ import annotations

import re
from collections.abc import Callable
from html import unescape
from pathlib import Path

from sqlalchemy import func, select
from starlette.testclient import TestClient

from mappings.codemaps import append_code, load_codemap
from registry_adapter.app import App
from registry_store.tables import CASES, MAPPING_ERRORS
from tests.review.conftest import UNLISTED_CAUSE, csrf_of

Client = Callable[[str | None], TestClient]
REQUIRED_MISSING = "e7cb050d8e29ac78"  # mapping.required_missing: a procedure without a date
VALUES = {"category": "other_lumbar_fusion", "module": "lumbar", "rank": "50", "display": "Unlisted"}


def ticket(html: str) -> str:
    match = re.search(r'<pre class="ticket" id="ticket" tabindex="0">(.*?)</pre>', html, re.S)
    assert match, "no ticket block"
    return unescape(match.group(1))


def test_causes_list_leads_with_titles_in_words(client_for: Client) -> None:
    page = client_for("vera").get("/causes").text
    assert "A procedure or diagnosis code is missing from a code map" in page
    filtered = client_for("vera").get("/causes?code=mapping.required_missing").text
    assert "A required value is missing" in filtered


def test_a_missing_code_cause_explains_who_fixes_it_and_offers_only_the_fix(client_for: Client) -> None:
    page = client_for("rita").get(f"/causes/{UNLISTED_CAUSE}").text
    assert "<h1>A procedure or diagnosis code is missing from a code map</h1>" in page
    assert "<strong>Who fixes it:</strong> a clinical coder (code maps)." in page
    assert "Add CPT 22899 to a code map" in page
    # Nothing changed yet: re-processing the same records would fail the same way.
    assert "Re-process records" not in page
    assert "Re-processing is not offered: the code is not in a code map yet" in page
    text = ticket(page)
    assert text.splitlines()[0] == (
        "Spine registry adapter, site test-site: A procedure or diagnosis code is missing from a code map"
    )
    assert f"Error code: codemap.unmapped_code [cpt|22899]; cause {UNLISTED_CAUSE}" in text
    assert "Records: 3 open, 0 ignored, 0 resolved" in text
    assert "Procedure/proc-unlisted-0 (source sample)" in text
    assert "Fix needed (a clinical coder (code maps)): Add the code" in text
    assert "DEMO-" not in text and "@" not in text  # ids and codes only


def test_re_process_is_offered_once_the_code_is_in_a_code_map(
    client_for: Client, site_codemaps: Path
) -> None:
    cmap = load_codemap(site_codemaps / "spine-procedures.yaml")
    append_code(cmap, "cpt", "22899", dict(VALUES), "by hand")
    page = client_for("rita").get(f"/causes/{UNLISTED_CAUSE}").text
    assert "Re-process records" in page and "the code is in a code map now" in page
    assert "Add CPT 22899 to a code map" not in page  # it is there already


def test_a_cause_the_hospital_must_fix_offers_no_re_process(client_for: Client) -> None:
    page = client_for("rita").get(f"/causes/{REQUIRED_MISSING}").text
    assert "<h1>A required value is missing</h1>" in page
    assert "the hospital&#39;s interface team" in page or "the hospital's interface team" in page
    assert "Re-process records" not in page
    assert "the hospital must send the record again" in page
    assert "Ignore cause" in page  # ignoring still helps (e.g. a test record)
    text = ticket(page)
    assert "Error code: mapping.required_missing; cause" in text  # no value for this kind of code
    assert "field surgery_date" in text


CODE_FORM = {
    "codemap": "spine-procedures",
    "value.spine-procedures.category": "other_lumbar_fusion",
    "value.spine-procedures.module": "lumbar",
    "value.spine-procedures.role": "index",
    "value.spine-procedures.rank": "10",
    "value.spine-procedures.revision": "false",
    "value.spine-procedures.label": "Unlisted procedure, spine",
}


def _counts(app: App) -> tuple[int, int]:
    with app.engine.connect() as conn:
        cases = conn.execute(select(func.count()).where(CASES.c.status == "active")).scalar_one()
        open_errors = conn.execute(
            select(func.count()).where(
                MAPPING_ERRORS.c.cause_id == UNLISTED_CAUSE, MAPPING_ERRORS.c.status == "open"
            )
        ).scalar_one()
    return int(cases), int(open_errors)


def test_add_code_preview_equals_the_apply_and_undo_restores(
    client_for: Client, review_app: App, site_codemaps: Path
) -> None:
    csv_before = (site_codemaps / "spine-procedures.csv").read_bytes()
    cases_before, open_before = _counts(review_app)
    client = client_for("rita")
    page = client.get(f"/causes/{UNLISTED_CAUSE}").text
    token = csrf_of(page)

    preview = client.post(f"/causes/{UNLISTED_CAUSE}/preview", data={**CODE_FORM, "csrf_token": token})
    assert preview.status_code == 200, preview.text
    words = re.search(r'<p id="preview-words">This (.*?)\. Nothing is saved yet\.</p>', preview.text)
    assert words, preview.text
    assert words.group(1).startswith("creates 3 case(s) (3 lumbar other lumbar fusion), removes 0, changes 0")
    assert "clears 3 error(s)" in words.group(1)
    # Nothing saved: the file, the cases and the errors are as they were.
    assert (site_codemaps / "spine-procedures.csv").read_bytes() == csv_before
    assert _counts(review_app) == (cases_before, open_before)
    assert 'value="Unlisted procedure, spine"' in preview.text  # the form keeps the values to confirm

    done = client.post(f"/causes/{UNLISTED_CAUSE}/add-code", data={**CODE_FORM, "csrf_token": token})
    assert done.status_code == 200, done.text
    cases_after, open_after = _counts(review_app)
    assert cases_after - cases_before == 3 and open_before - open_after == 3  # as previewed
    row = (site_codemaps / "spine-procedures.csv").read_text().splitlines()[-1]
    assert ",false," in row and "False" not in row  # the file keeps its own spelling

    assert "Undo the code added" in done.text
    undone = client.post(f"/causes/{UNLISTED_CAUSE}/undo", data={"csrf_token": token})
    assert undone.status_code == 200, undone.text
    assert "Undone: CPT 22899 is no longer in spine-procedures" in undone.text
    assert (site_codemaps / "spine-procedures.csv").read_bytes() == csv_before
    assert _counts(review_app) == (cases_before, open_before)
    assert "Undo the code added" not in undone.text
    again = client.post(f"/causes/{UNLISTED_CAUSE}/undo", data={"csrf_token": token})
    assert again.status_code == 400 and "no code added in review for this cause to undo" in again.text


def test_without_a_site_folder_the_installed_code_maps_are_never_edited(
    make_app: Callable[..., App], tmp_path: Path
) -> None:
    from mappings.codemaps import BUNDLED
    from review.app import create_app
    from tests.review.conftest import fill, login

    secret = tmp_path / "s.secret"
    secret.write_text("s" * 48)
    app = make_app(review={"session_secret_file": str(secret)})  # mappings.codemaps unset
    fill(app)
    bundled = (BUNDLED / "spine-procedures.csv").read_bytes()
    client = TestClient(create_app(app), base_url="http://testserver")
    assert login(client, "rita").status_code == 303
    token = csrf_of(client.get(f"/causes/{UNLISTED_CAUSE}").text)
    refused = client.post(f"/causes/{UNLISTED_CAUSE}/add-code", data={**CODE_FORM, "csrf_token": token})
    assert refused.status_code == 400
    assert "set mappings.codemaps in the config" in refused.text
    assert (BUNDLED / "spine-procedures.csv").read_bytes() == bundled


def _staging_id(app: App, resource_type: str, resource_id: str) -> int:
    from registry_store.tables import STAGING

    with app.engine.connect() as conn:
        return int(
            conn.execute(
                select(STAGING.c.id).where(
                    STAGING.c.resource_type == resource_type, STAGING.c.resource_id == resource_id
                )
            ).scalar_one()
        )


def test_record_drill_down_shows_raw_beside_what_the_mapping_made(
    client_for: Client, review_app: App
) -> None:
    failed = _staging_id(review_app, "Procedure", "proc-unlisted-0")
    rita = client_for("rita")
    assert f'href="/records/{failed}"' in rita.get(f"/causes/{UNLISTED_CAUSE}").text
    page = rita.get(f"/records/{failed}").text
    assert "22899" in page and "No registry row: the record failed." in page
    assert f'href="/causes/{UNLISTED_CAUSE}"' in page
    assert 'href="/cases?q=pat-0003"' in page and 'href="/cases/sample%3Aproc-0003' in page

    patient = _staging_id(review_app, "Patient", "pat-0003")
    assert "DEMO-100003" in rita.get(f"/records/{patient}").text
    viewer = client_for("vera").get(f"/records/{patient}").text
    assert "DEMO-100003" not in viewer and "•••" in viewer
    mapped = rita.get(f"/records/{_staging_id(review_app, 'Procedure', 'proc-0001')}").text
    assert "<h3>procedures</h3>" in mapped
    assert rita.get("/records/999999").status_code == 404
