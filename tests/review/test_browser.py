"""End to end in a real browser: Chromium driven by Playwright against uvicorn serving the UI.

The store is filled by the real pipeline from examples/sample-feed; code-map edits go to a copy
of the code maps configured as the site's folder. Each page is saved as a screenshot under
tests/artifacts/screenshots/ for a human to look at.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from registry_adapter.app import App
from registry_store.tables import REMINDERS
from review.service import ReviewService
from tests.review.browser_kit import ARGS, BROWSER_MARKS, CHROMIUM, free_port
from tests.review.conftest import PASSWORDS, UNLISTED_CAUSE

SHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
pytestmark = BROWSER_MARKS



@pytest.fixture
def server(review_app: App) -> Iterator[str]:
    """uvicorn serving the review UI on a free local port, in a thread."""
    today = datetime.now(review_app.settings.site.tz).date()
    with review_app.engine.begin() as conn:  # a worklist to look at
        conn.execute(
            REMINDERS.insert(),
            [
                {
                    "case_id": f"sample:proc-000{i}",
                    "timepoint": "90d",
                    "due_date": today,
                    "window_start": today - timedelta(days=i),
                    "window_end": today + timedelta(days=60),
                    "status": "sent" if i % 2 else "scheduled",
                    "attempts": i % 3,
                    "channel": "email",
                }
                for i in range(1, 8)
            ],
        )
    service = ReviewService(review_app, host="127.0.0.1", port=free_port())
    service.start()
    yield service.url
    service.stop()


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser: Browser, server: str) -> Iterator[Callable[[str], Page]]:
    contexts = []

    def make(username: str) -> Page:
        context = browser.new_context(base_url=server, viewport={"width": 1280, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.goto("/login")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(PASSWORDS[username])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(re.compile(r"/$"))  # the start page (this month at a glance)
        page.goto("/causes")
        return page

    yield make
    for context in contexts:
        context.close()


def nav(page: Page, name: str) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name=name).click()


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_reviewer_fixes_a_cause_and_the_case_appears(
    browser: Browser, server: str, open_page: Callable[[str], Page]
) -> None:
    # The login page, reached with the keyboard: the skip link comes first.
    anon = browser.new_context(base_url=server, viewport={"width": 1280, "height": 800})
    login_page = anon.new_page()
    login_page.goto("/causes")
    expect(login_page).to_have_url(re.compile(r"/login$"))
    login_page.get_by_label("Username").fill("rita")
    login_page.get_by_label("Password").fill("not-the-password")
    login_page.get_by_role("button", name="Sign in").click()
    expect(login_page.get_by_role("alert")).to_have_text("Wrong username or password.")
    shot(login_page, "01-login-refused")
    anon.close()

    page = open_page("rita")
    expect(page.get_by_role("heading", name="Mapping errors by cause")).to_be_visible()
    shot(page, "02-causes")
    page.keyboard.press("Tab")
    expect(page.locator(".skip")).to_be_focused()

    page.get_by_label("Search codes and values").fill("22899")
    page.get_by_role("button", name="Apply").click()
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("cpt|22899")
    expect(rows.first.locator("td.num")).to_have_text("3")
    shot(page, "03-causes-search")
    rows.first.get_by_role("link").click()
    expect(page).to_have_url(re.compile(f"/causes/{UNLISTED_CAUSE}$"))
    expect(page.locator("#open-count")).to_have_text("3")
    expect(page.locator("pre.raw mark").first).to_contain_text('"22899"')
    shot(page, "04-cause-reviewer")

    form = page.locator("form[action$='/add-code']")
    expect(form.get_by_role("group", name=re.compile("Code map spine-procedures"))).to_be_visible()
    categories = form.get_by_label("Category").locator("option").all_inner_texts()
    assert "other_lumbar_fusion" in categories and "plif_tlif" in categories
    form.get_by_label("Category").select_option("other_lumbar_fusion")
    form.get_by_label("Module").select_option("lumbar")
    form.get_by_label("Role").select_option("index")
    form.get_by_label("Rank").fill("10")
    form.get_by_label("Label").fill("Unlisted procedure, spine")
    form.get_by_role("button", name="Add code and re-process").click()
    expect(page.get_by_role("status")).to_contain_text("3 record(s) re-processed: 3 mapped, 0 failed")
    expect(page.locator("#open-count")).to_have_text("0")
    shot(page, "05-cause-resolved")

    nav(page, "Errors by cause")
    expect(page.locator(f"a[href='/causes/{UNLISTED_CAUSE}']")).to_have_count(0)
    page.goto("/causes?status=resolved")
    expect(page.locator(f"a[href='/causes/{UNLISTED_CAUSE}']")).to_have_count(1)

    nav(page, "Cases")
    page.get_by_label("Case, procedure or patient id").fill("unlisted")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("tbody tr").first).to_contain_text("other lumbar fusion")
    shot(page, "06-cases-unlisted")
    page.locator("tbody tr").first.get_by_role("link").click()
    expect(page.get_by_role("heading", name="Procedures")).to_be_visible()
    expect(page.locator("body")).to_contain_text("cpt|22899")
    shot(page, "07-case-detail")

    page.goto("/cases/sample:proc-0001")  # a case with PROMs at several time points
    expect(page.locator("section[aria-labelledby='prom-h'] tbody tr")).to_have_count(3)
    shot(page, "07b-case-with-proms")
    page.goto("/cases")
    shot(page, "08-cases")
    nav(page, "Reminders")
    expect(page.locator("tbody tr")).to_have_count(5)  # page size 5 of 7 due
    shot(page, "09-reminders")
    with page.expect_download() as download:
        page.get_by_role("link", name=re.compile("Export")).click()
    assert download.value.suggested_filename.startswith("reminders-due-")
    nav(page, "Feed health")
    expect(page.locator("svg[role='img']")).to_be_visible()
    shot(page, "10-feeds")

    # A form whose CSRF token was removed is refused.
    page.goto("/causes?q=M48.9")
    page.locator("tbody tr").first.get_by_role("link").click()
    page.locator("form[action$='/ignore'] input[name='csrf_token']").evaluate("el => el.remove()")
    page.locator("form[action$='/ignore']").get_by_label("Reason (required)").fill("test")
    page.get_by_role("button", name="Ignore cause").click()
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    shot(page, "11-csrf-refused")


def test_viewer_cannot_act_and_sees_masked_records(open_page: Callable[[str], Page]) -> None:
    page = open_page("vera")
    page.goto(f"/causes/{UNLISTED_CAUSE}")
    expect(page.locator("#open-count")).to_have_text("3")
    expect(page.locator("form[action^='/causes/']")).to_have_count(0)
    expect(page.get_by_role("button", name="Add code and re-process")).to_have_count(0)
    expect(page.get_by_role("button", name="Ignore cause")).to_have_count(0)
    shot(page, "12-cause-viewer")
    token = page.locator("input[name='csrf_token']").first.get_attribute("value")
    response = page.request.post(
        f"/causes/{UNLISTED_CAUSE}/ignore", form={"csrf_token": token or "", "reason": "viewer tries"}
    )
    assert response.status == 403
    page.reload()
    expect(page.locator("#open-count")).to_have_text("3")
    page.goto("/audit")
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()


def test_admin_reads_the_audit_log(open_page: Callable[[str], Page]) -> None:
    page = open_page("adam")
    page.goto(f"/causes/{UNLISTED_CAUSE}")
    page.get_by_label("Reason (required)").fill("unlisted codes are reviewed by hand")
    page.get_by_role("button", name="Ignore cause").click()
    expect(page.get_by_role("status")).to_contain_text("ignored")
    shot(page, "13-cause-ignored")
    nav(page, "Audit log")
    expect(page.locator("tbody tr").first).to_contain_text("cause.ignore")
    expect(page.locator("tbody tr").first).to_contain_text("adam")
    shot(page, "14-audit")


A11Y_PAGES = [
    "/causes",
    f"/causes/{UNLISTED_CAUSE}",
    "/cases",
    "/cases/sample:proc-0001",
    "/reminders",
    "/feeds",
    "/measures",
    "/audit",
]


def test_pages_pass_axe_accessibility_checks(
    open_page: Callable[[str], Page], browser: Browser, server: str
) -> None:
    """axe-core's WCAG 2 A/AA rules (labels, contrast, landmarks, table headers, ...)."""
    from axe_playwright_python.sync_playwright import Axe

    axe = Axe()
    options = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}}
    anon = browser.new_context(base_url=server).new_page()
    anon.goto("/login")
    pages = [("/login", anon)]
    admin = open_page("adam")
    pages += [(path, admin) for path in A11Y_PAGES]
    problems = []
    for path, page in pages:
        page.goto(path)
        results = axe.run(page, options=options)
        for violation in results.response["violations"]:
            targets = [n["target"] for n in violation["nodes"]][:3]
            problems.append(
                f"{path}: {violation['id']} ({violation['impact']}) {violation['help']} {targets}"
            )
    assert problems == []


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


@pytest.fixture
def second_code_map(site_codemaps: Path) -> Path:
    """A second code map that also takes CPT 22899, with value columns of its own."""
    (site_codemaps / "research-procedures.yaml").write_text(RESEARCH_MANIFEST)
    table = site_codemaps / "research-procedures.csv"
    table.write_text("system,code,match,study_group,label,source\n")
    return table


def test_add_code_form_shows_the_chosen_maps_values(
    second_code_map: Path, open_page: Callable[[str], Page]
) -> None:
    page = open_page("rita")
    page.goto(f"/causes/{UNLISTED_CAUSE}")
    form = page.locator("form[action$='/add-code']")
    spine = form.get_by_role("group", name="Values in spine-procedures")
    research = form.get_by_role("group", name="Values in research-procedures")
    expect(spine).to_be_visible()
    expect(research).to_be_hidden()
    shot(page, "15-add-code-two-maps")
    form.get_by_label("research-procedures (version 1)").check()
    expect(research).to_be_visible()
    expect(spine).to_be_hidden()
    assert research.get_by_label("Study group").locator("option").all_inner_texts() == [
        "Choose…",
        "alpha",
        "beta",
    ]
    research.get_by_label("Study group").select_option("beta")
    research.get_by_label("Label").fill("trial arm")
    shot(page, "16-add-code-second-map-chosen")
    form.get_by_role("button", name="Add code and re-process").click()
    expect(page.get_by_role("status")).to_contain_text("CPT 22899 was added to research-procedures")
    assert "22899,exact,beta,trial arm" in second_code_map.read_text()
