"""Administration: sign-ins and failed sign-ins in the audit log; the log filtered by user,
action and date and shown as readable changes (before → after), not raw JSON."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from starlette.testclient import TestClient

from registry_adapter.app import App
from review.pages.audit_log import readable_changes
from tests.review.conftest import UNLISTED_CAUSE, csrf_of, login

Client = Callable[[str | None], TestClient]


def test_sign_ins_and_failed_sign_ins_are_audited_and_filterable(client_for: Client, review_app: App) -> None:
    stranger = client_for(None)
    assert login(stranger, "rita", "not-her-password").status_code == 400
    admin = client_for("adam")
    failed = admin.get("/audit?action=session.sign_in_failed").text
    assert "user:rita" in failed and "user:adam" not in failed
    signed_in = admin.get("/audit?action=session.sign_in&user=adam").text
    assert "user:adam" in signed_in and "user:rita" not in signed_in
    assert "not-her-password" not in admin.get("/audit").text  # never the password


def test_audit_entries_read_as_changes_and_filter_by_date(client_for: Client, review_app: App) -> None:
    rita = client_for("rita")
    token = csrf_of(rita.get(f"/causes/{UNLISTED_CAUSE}").text)
    rita.post(f"/causes/{UNLISTED_CAUSE}/ignore", data={"reason": "reviewed by hand", "csrf_token": token})
    admin = client_for("adam")
    page = admin.get("/audit?action=cause.ignore").text
    assert "decision.status:</span> <ins>ignored</ins>" in page
    assert "counts.open:</span> <del>3</del> → <ins>0</ins>" in page
    assert '<pre class="json">' not in page
    today = datetime.now(review_app.settings.site.tz).date()
    assert "cause.ignore" in admin.get(f"/audit?action=cause.ignore&since={today}&until={today}").text
    later = admin.get(f"/audit?since={today + timedelta(days=1)}").text
    assert "No audit entries match these filters." in later
    assert admin.get("/audit?since=yesterday").status_code == 400
    assert client_for("rita").get("/audit").status_code == 403


def test_readable_changes_flatten_and_keep_only_what_changed() -> None:
    lines = readable_changes(
        {"counts": {"open": 3, "ignored": 0}, "decision": None},
        {"counts": {"open": 0, "ignored": 3}, "decision": {"status": "ignored"}},
    )
    assert {"field": "counts.open", "before": "3", "after": "0"} in lines
    assert {"field": "decision.status", "before": "", "after": "ignored"} in lines
    assert all(line["field"] != "counts.ignored" or line["before"] == "0" for line in lines)


def _post(client: TestClient, **form: str) -> str:
    token = csrf_of(client.get("/users").text)
    done = client.post("/users", data={"csrf_token": token, **form}, follow_redirects=False)
    assert done.status_code == 303
    return client.get("/users").text


def test_admin_manages_users_in_the_ui(client_for: Client, review_app: App) -> None:
    admin = client_for("adam")
    page = _post(admin, action="add", username="cora", role="reviewer", password="coordinator-pass-1")
    assert "User cora added as reviewer." in page
    cora = client_for(None)
    assert login(cora, "cora", "coordinator-pass-1").status_code == 303
    assert cora.get("/reminders").status_code == 200

    assert "cora is now viewer." in _post(admin, action="role", username="cora", role="viewer")
    reset = _post(admin, action="password", username="cora", password="another-pass-12")
    assert "Password of cora reset" in reset
    assert cora.get("/reminders", follow_redirects=False).status_code == 303  # her session ended
    assert login(client_for(None), "cora", "another-pass-12").status_code == 303

    assert "cora is disabled." in _post(admin, action="disable", username="cora")
    assert login(client_for(None), "cora", "another-pass-12").status_code == 400
    assert "you cannot disable your own account" in _post(admin, action="disable", username="adam")
    assert "at least" in _post(admin, action="add", username="dan", role="viewer", password="short")

    log = admin.get("/audit?user=adam").text
    for action in ("user.add", "user.role", "user.password", "user.disable"):
        assert action in log
    assert "another-pass-12" not in log and "coordinator-pass-1" not in log
    assert client_for("rita").get("/users").status_code == 403
