"""The coordinator's workspace walked in a real browser (Chromium driven by Playwright against
uvicorn serving the UI), on the demo store: the sample feed dated to today, synced by the real
pipeline, reminders planned.

Every page visited is saved at 1366x768 (desktop) and 390x844 (phone) under var/screenshots/
(README, "Coordinator's workspace").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import select

from registry_adapter.app import App
from registry_store.tables import AUDIT_LOG, REMINDERS
from review.service import ReviewService
from tests.review.browser_kit import ARGS, BROWSER_MARKS, CHROMIUM, free_port
from tests.review.conftest import PASSWORDS, UNLISTED_CAUSE

SHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
pytestmark = BROWSER_MARKS
SIZES = {"desktop": {"width": 1366, "height": 768}, "phone": {"width": 390, "height": 844}}



@pytest.fixture
def server(today_app: App) -> Iterator[str]:
    service = ReviewService(today_app, host="127.0.0.1", port=free_port())
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
def signed_in(browser: Browser, server: str) -> Iterator[Callable[[str, str], Page]]:
    """A page signed in as a user, at a viewport size ("desktop" or "phone")."""
    contexts = []

    def make(username: str, size: str = "desktop") -> Page:
        context = browser.new_context(base_url=server, viewport=SIZES[size])
        contexts.append(context)
        page = context.new_page()
        page.goto("/login")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(PASSWORDS[username])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_load_state()
        return page

    yield make
    for context in contexts:
        context.close()


def shot(page: Page, name: str) -> None:
    """The page at desktop size, then at phone size (same URL, same session)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    original = page.viewport_size
    for size, viewport in SIZES.items():
        page.set_viewport_size(viewport)
        page.screenshot(path=str(SHOTS / f"workspace-{name}-{size}.png"), full_page=True)
    if original:
        page.set_viewport_size(original)


def sideways(page: Page) -> list[str]:
    """The page and table boxes that scroll sideways (empty: none), with their widths."""
    found: list[str] = page.evaluate(
        "() => [document.documentElement, ...document.querySelectorAll('.table-wrap')]"
        ".filter(el => el.scrollWidth > el.clientWidth + 1)"
        ".map(el => `${el.tagName}.${el.className} ${el.scrollWidth}>${el.clientWidth}`)"
    )
    return found


def no_sideways_scroll(page: Page) -> bool:
    return not sideways(page)


def test_coordinator_works_the_worklist_and_a_phone_completion_stops_reminders(
    signed_in: Callable[[str, str], Page], today_app: App
) -> None:
    page = signed_in("rita", "desktop")
    page.goto("/reminders?status=worklist")
    rows = page.locator("tbody tr")
    expect(rows.first).to_be_visible()
    total = rows.count()
    assert total >= 5
    headers = [t.lower() for t in page.locator("thead th").all_text_contents()]
    assert headers[:3] == ["why call", "days left", "phone"]
    shot(page, "01-worklist")

    # Sorted by days left in the window: the most urgent first.
    page.get_by_label("Sort by").select_option("days_left")
    page.get_by_role("button", name="Show").click()
    days = [int(t) for t in page.locator("tbody tr td.num:nth-child(2)").all_inner_texts() if t.strip()]
    assert days == sorted(days)

    first = rows.first.get_by_role("link").first
    href = first.get_attribute("href")
    assert href and re.fullmatch(r"/reminders/\d+", href)
    rid = int(href.rsplit("/", 1)[1])
    first.click()
    expect(page.get_by_role("heading", name="Record what you did")).to_be_visible()
    shot(page, "02-reminder")

    call = page.locator("form", has=page.get_by_role("heading", name="Phone call"))
    call.get_by_label("Outcome").select_option("left_message")
    call.get_by_label("Note (optional)").fill("voicemail, will try Friday")
    call.get_by_role("button", name="Save call").click()
    expect(page.get_by_role("status")).to_have_text("Call outcome recorded.")
    expect(page.locator(".history")).to_contain_text("Left a message")

    done = page.locator("form", has=page.get_by_role("heading", name="Completed with staff"))
    done.get_by_label("How").select_option("phone")
    done.get_by_role("button", name="Record as completed").click()
    expect(page.get_by_role("status")).to_contain_text("its reminders have stopped")
    expect(page.locator("#reminder-status")).to_contain_text("completed")
    expect(page.get_by_role("heading", name="Record what you did")).to_have_count(0)
    shot(page, "03-reminder-completed")

    with today_app.engine.connect() as conn:
        status, next_on = conn.execute(
            select(REMINDERS.c.status, REMINDERS.c.next_attempt_on).where(REMINDERS.c.id == rid)
        ).one()
        audited = conn.execute(
            select(AUDIT_LOG.c.action).where(AUDIT_LOG.c.target.like(f"reminder:{rid} %"))
        ).scalars().all()
    assert (status, next_on) == ("completed", None)
    assert sorted(audited) == ["worklist.call", "worklist.complete"]

    page.goto("/reminders?status=worklist")
    expect(page.locator(f"a[href='/reminders/{rid}']")).to_have_count(0)
    expect(page.locator("tbody tr")).to_have_count(total - 1)

    # The case page: the reminder history links each time point to its page.
    with today_app.engine.connect() as conn:
        case_id = conn.execute(select(REMINDERS.c.case_id).where(REMINDERS.c.id == rid)).scalar_one()
    page.goto(f"/cases/{case_id}")
    expect(page.locator(f"a[href='/reminders/{rid}']")).to_have_count(1)
    shot(page, "10-case")


def test_worklist_at_phone_width_has_no_sideways_scrolling(signed_in: Callable[[str, str], Page]) -> None:
    page = signed_in("rita", "phone")
    page.goto("/reminders?status=worklist")
    expect(page.locator("tbody tr").first).to_be_visible()
    # The key columns stay; the rest are on the reminder's page.
    expect(page.locator("thead th", has_text="Why call")).to_be_visible()
    expect(page.locator("thead th", has_text="MRN")).to_be_hidden()
    assert no_sideways_scroll(page)
    for path in ("/reminders?status=due", "/reminders?status=all", "/causes", "/cases", "/"):
        page.goto(path)
        assert no_sideways_scroll(page), (path, sideways(page))
    shot(page, "11-start-phone")


def test_cause_page_speaks_words_and_gives_an_it_ticket(signed_in: Callable[[str, str], Page]) -> None:
    page = signed_in("rita", "desktop")
    page.goto("/causes")
    title = "A procedure or diagnosis code is missing from a code map"
    expect(page.get_by_role("link", name=title).first).to_be_visible()
    shot(page, "04-causes")
    page.goto(f"/causes/{UNLISTED_CAUSE}")
    expect(page.get_by_role("heading", level=1)).to_have_text(title)
    expect(page.locator(".explain")).to_contain_text("Who fixes it: a clinical coder (code maps).")
    expect(page.get_by_role("button", name="Re-process records")).to_have_count(0)
    ticket = page.locator("#ticket")
    expect(ticket).to_contain_text("Records: 3 open")
    expect(ticket).to_contain_text("Procedure/proc-unlisted-0 (source sample)")
    page.get_by_role("button", name="Copy").click()
    # Copied to the clipboard, or (no clipboard permission) selected for Ctrl+C; the clipboard
    # answers asynchronously, so wait for either.
    page.wait_for_function(
        "() => document.querySelector('button[data-copy]').textContent === 'Copied'"
        " || window.getSelection().toString().includes('Records: 3 open')",
        timeout=5000,
    )
    shot(page, "05-cause")

    # Re-process the records selected: "select all" ticks the page's boxes, then one is sent.
    boxes = page.locator("#records-form input[name='staging_id']")
    expect(boxes).to_have_count(3)
    page.get_by_label("Select all records on this page").check()
    for box in boxes.all():
        expect(box).to_be_checked()
    page.get_by_label("Select all records on this page").uncheck()
    boxes.first.check()
    expect(page.get_by_label("Select all records on this page")).not_to_be_checked()
    page.get_by_role("button", name="Re-process selected").click()
    # No code was added: the record is mapped again and still fails, and the page says so.
    expect(page.get_by_role("status")).to_contain_text("Re-processed 1 record: 0 mapped, 1 still failing")
    expect(page).to_have_url(re.compile(rf"/causes/{UNLISTED_CAUSE}\?records=open$"))
    shot(page, "05b-cause-reprocessed-selected")


def test_start_page_shows_this_month_and_opens_the_lists(
    signed_in: Callable[[str, str], Page], today_app: App
) -> None:
    from review.this_month import this_month
    from tests.review.conftest import site_today

    page = signed_in("vera", "desktop")
    expect(page).to_have_url(re.compile(r"/$"))  # signing in lands on the start page
    expect(page.get_by_role("heading", level=1)).to_have_text("This month at a glance")
    with today_app.engine.connect() as conn:
        figures = this_month(conn, site_today(today_app), today_app.settings.site.tz)
    # The same figures as `registry-adapter month --json` (test_start_page.py runs the CLI).
    for row in figures["completeness"]:
        cells = page.locator(f"tr[data-timepoint='{row['timepoint']}'] td.num a")
        assert cells.all_inner_texts() == [str(row["completed"]), str(row["open"]), str(row["missing"])]
    expect(page.locator("svg[role='img'] rect")).not_to_have_count(0)
    expect(page.locator("#submission")).to_have_text("No submission yet.")
    shot(page, "00-start")

    open_1y = next(r for r in figures["completeness"] if r["timepoint"] == "1y")
    page.locator("tr[data-timepoint='1y'] a[href*='outcome=open']").click()
    expect(page).to_have_url(re.compile(r"/reminders\?status=all&period=month&timepoint=1y&outcome=open"))
    expect(page.locator(".pager span").first).to_contain_text(f"of {open_1y['open']}")
    shot(page, "06-reminders-this-month")


def test_add_code_preview_apply_and_undo(signed_in: Callable[[str, str], Page], today_app: App) -> None:
    def counts() -> tuple[int, int]:
        from sqlalchemy import func

        from registry_store.tables import CASES, MAPPING_ERRORS

        with today_app.engine.connect() as conn:
            cases = conn.execute(select(func.count()).where(CASES.c.status == "active")).scalar_one()
            errors = conn.execute(
                select(func.count()).where(
                    MAPPING_ERRORS.c.cause_id == UNLISTED_CAUSE, MAPPING_ERRORS.c.status == "open"
                )
            ).scalar_one()
        return int(cases), int(errors)

    before = counts()
    page = signed_in("rita", "desktop")
    page.goto(f"/causes/{UNLISTED_CAUSE}")
    form = page.locator("form[action$='/add-code']")
    form.get_by_label("Category").select_option("other_lumbar_fusion")
    form.get_by_label("Module").select_option("lumbar")
    form.get_by_label("Role").select_option("index")
    form.get_by_label("Rank").fill("10")
    form.get_by_label("Label").fill("Unlisted procedure, spine")
    form.get_by_role("button", name="Preview").click()
    words = page.locator("#preview-words")
    expect(words).to_contain_text("creates 3 case(s) (3 lumbar other lumbar fusion), removes 0, changes 0")
    expect(words).to_contain_text("clears 3 error(s)")
    assert counts() == before  # the preview saved nothing
    shot(page, "07-add-code-preview")

    page.locator("form[action$='/add-code']").get_by_role("button", name="Add code and re-process").click()
    expect(page.get_by_role("status")).to_contain_text("3 record(s) re-processed: 3 mapped")
    cases, errors = counts()
    assert (cases - before[0], before[1] - errors) == (3, 3)  # what the preview said
    shot(page, "08-add-code-applied")

    page.get_by_role("button", name="Undo").click()
    expect(page.get_by_role("status")).to_contain_text("Undone: CPT 22899 is no longer in spine-procedures")
    assert counts() == before
    shot(page, "09-add-code-undone")


def test_admin_pages_audit_log_and_users(signed_in: Callable[[str, str], Page]) -> None:
    page = signed_in("adam", "desktop")
    page.goto("/users")
    page.get_by_label("Username").fill("cora")
    page.get_by_label("Role", exact=True).select_option("reviewer")
    page.get_by_label("Password", exact=True).fill("coordinator-pass-1")
    page.get_by_role("button", name="Add user").click()
    expect(page.get_by_role("status")).to_have_text("User cora added as reviewer.")
    expect(page.locator("tr[data-user='cora']")).to_contain_text("reviewer")
    shot(page, "12-users")
    page.goto("/audit")
    page.get_by_label("Action").select_option("user.add")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.locator("tbody tr").first).to_contain_text("role:")
    page.goto("/audit")
    shot(page, "13-audit")


def test_answers_entered_by_phone_are_scored(signed_in: Callable[[str, str], Page], today_app: App) -> None:
    page = signed_in("rita", "desktop")
    page.goto("/reminders?status=worklist")
    page.locator("tbody tr").first.get_by_role("link").first.click()
    page.get_by_role("link", name="Enter the answers").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Enter the answers")
    form = page.locator("#answers")
    selects = form.locator("select[name^='item.']")
    numbers = form.locator("input[type='number'][name^='item.']")
    for i in range(selects.count()):
        selects.nth(i).select_option(index=2)  # the second statement of each section
    for i in range(numbers.count()):
        numbers.nth(i).fill("1")
    shot(page, "14-answers")
    form.get_by_role("button", name="Save and score").click()
    expect(page.get_by_role("status")).to_contain_text("Answers saved and scored as response")
    expect(page.locator("#reminder-status")).to_contain_text("completed")
