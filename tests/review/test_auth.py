"""Sign-in, roles, session cookies and the ``users`` command."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import select, update
from starlette.testclient import TestClient

from registry_adapter.app import App
from registry_adapter.cli import cli
from registry_adapter.config import ConfigError, load_settings, parse_settings
from registry_store.tables import AUDIT_LOG as AUDIT
from registry_store.tables import USERS
from review.app import SESSION_COOKIE, create_app
from review.auth import UserError, add_user, set_password, set_user
from review.settings import ReviewSettings
from tests.conftest import base_config, write_config_file
from tests.review.conftest import PASSWORDS, TOKEN, csrf_of, login

Client = Callable[[str | None], TestClient]


def test_pages_need_sign_in(client_for: Client) -> None:
    client = client_for(None)
    for path in ("/", "/causes", "/cases", "/reminders", "/feeds", "/reminders.csv", "/audit"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/login"


def test_sign_in_and_out(client_for: Client) -> None:
    client = client_for(None)
    response = login(client, "rita")
    assert response.status_code == 303
    page = client.get("/causes")
    assert page.status_code == 200
    assert "rita" in page.text and "reviewer" in page.text
    out = client.post("/logout", data={"csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert out.status_code == 303
    assert client.get("/causes", follow_redirects=False).status_code == 303


@pytest.mark.parametrize(
    ("username", "password"), [("rita", "wrong-password-1"), ("nobody", "whatever-12345"), ("RITA", None)]
)
def test_wrong_credentials_are_refused_with_one_message(
    client_for: Client, username: str, password: str | None
) -> None:
    client = client_for(None)
    response = login(client, username, password or PASSWORDS["rita"])
    assert response.status_code == 400
    assert "Wrong username or password." in response.text
    assert client.get("/causes", follow_redirects=False).status_code == 303


def test_disabled_account_loses_its_session(client_for: Client, review_app: App) -> None:
    client = client_for("rita")
    assert client.get("/causes").status_code == 200
    set_user(review_app.engine, "rita", disabled=True)
    assert client.get("/causes", follow_redirects=False).status_code == 303
    assert login(client, "rita").status_code == 400


def test_role_change_applies_at_once(client_for: Client, review_app: App) -> None:
    client = client_for("vera")
    assert client.get("/audit").status_code == 403
    set_user(review_app.engine, "vera", role="admin")
    assert client.get("/audit").status_code == 200


def _with_review(app: App, **changes: object) -> App:
    settings = app.settings.with_section(app.settings.section(ReviewSettings).model_copy(update=changes))
    return App(settings=settings, db_url=app.db_url)


def test_session_cookie_flags_on_loopback(review_app: App) -> None:
    # Default secure_cookies: auto, and the UI listens on 127.0.0.1: plain HTTP must work.
    assert review_app.settings.section(ReviewSettings).secure_cookies == "auto"
    client = TestClient(create_app(review_app))
    login(client, "rita")
    cookie = _session_set_cookie(client)
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert "secure" not in cookie.split(";")[-1] and "; secure" not in cookie


@pytest.mark.parametrize(
    ("setting", "host", "secure"),
    [
        ("auto", "0.0.0.0", True),
        ("auto", "registry.hospital.example", True),
        ("auto", "::1", False),
        ("auto", "localhost", False),
        (False, "0.0.0.0", False),
        (True, "127.0.0.1", True),
    ],
)
def test_secure_cookies_follow_the_listening_host(
    review_app: App, setting: object, host: str, secure: bool
) -> None:
    app = _with_review(review_app, secure_cookies=setting)
    assert app.settings.section(ReviewSettings).cookies_secure(host) is secure
    client = TestClient(create_app(app, host), base_url="https://testserver")
    login(client, "rita")
    assert ("; secure" in _session_set_cookie(client)) is secure


def test_secure_cookies_setting_parses_from_config(tmp_path: Path) -> None:
    for value, expected in (("auto", "auto"), (True, True), (False, False)):
        parsed = parse_settings(base_config(tmp_path, review={"secure_cookies": value}))
        assert parsed.section(ReviewSettings).secure_cookies == expected
    with pytest.raises(ConfigError, match="secure_cookies"):
        parse_settings(base_config(tmp_path, review={"secure_cookies": "sometimes"}))


def test_sign_out_voids_a_copied_session_cookie(review_app: App) -> None:
    web = create_app(review_app)
    client = TestClient(web)
    assert login(client, "rita").status_code == 303
    thief = TestClient(web)
    thief.cookies.update(client.cookies)
    assert thief.get("/causes").status_code == 200
    token = csrf_of(client.get("/causes").text)
    assert client.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303
    assert thief.get("/causes", follow_redirects=False).status_code == 303
    # Signing in again works and gives a session of the new version.
    assert login(client, "rita").status_code == 303
    assert client.get("/causes").status_code == 200


def test_password_change_ends_every_session(client_for: Client, review_app: App) -> None:
    rita, adam = client_for("rita"), client_for("adam")
    set_password(review_app.engine, "rita", "a-brand-new-password-1")
    assert rita.get("/causes", follow_redirects=False).status_code == 303
    assert adam.get("/causes").status_code == 200  # other accounts are untouched
    assert login(rita, "rita", "a-brand-new-password-1").status_code == 303


def _user(app: App, name: str) -> dict[str, object]:
    with app.engine.connect() as conn:
        return dict(conn.execute(select(USERS).where(USERS.c.username == name)).one()._mapping)


def _locks(app: App) -> list[dict[str, object]]:
    with app.engine.connect() as conn:
        rows = conn.execute(select(AUDIT).where(AUDIT.c.action == "user.locked")).all()
    return [dict(r._mapping) for r in rows]


def test_five_wrong_passwords_lock_the_account(client_for: Client, review_app: App) -> None:
    client = client_for(None)
    for _ in range(4):
        assert login(client, "rita", "wrong-password-1").status_code == 400
    assert _user(review_app, "rita")["failed_logins"] == 4
    assert login(client, "rita").status_code == 303  # success resets the count
    assert _user(review_app, "rita")["failed_logins"] == 0

    anon = client_for(None)
    for _ in range(5):
        assert login(anon, "rita", "wrong-password-1").status_code == 400
    locked = login(anon, "rita")  # the right password, but the account is locked
    unknown = login(client_for(None), "nobody-here", "wrong-password-1")
    assert locked.status_code == unknown.status_code == 400

    def same(text: str, name: str) -> str:
        return TOKEN.sub("", text).replace(name, "X")  # the per-session CSRF token differs

    assert same(locked.text, "rita") == same(unknown.text, "nobody-here")
    assert anon.get("/causes", follow_redirects=False).status_code == 303
    row = _user(review_app, "rita")
    until = row["locked_until"]
    assert isinstance(until, datetime)
    left = (until.replace(tzinfo=until.tzinfo or UTC) - datetime.now(UTC)).total_seconds()
    assert 14 * 60 < left <= 15 * 60
    [entry] = _locks(review_app)
    assert entry["target"] == "user:rita" and entry["after"]["minutes"] == 15  # type: ignore[index]
    assert "wrong-password-1" not in json.dumps([entry["before"], entry["after"]])
    # Attempts while locked do not extend the lock; once it has passed, the password works.
    login(anon, "rita", "wrong-password-1")
    assert _user(review_app, "rita")["locked_until"] == until
    with review_app.engine.begin() as conn:
        conn.execute(
            update(USERS)
            .where(USERS.c.username == "rita")
            .values(locked_until=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert login(anon, "rita").status_code == 303
    assert _user(review_app, "rita")["locked_until"] is None


def test_lockout_threshold_is_configurable(review_app: App) -> None:
    app = _with_review(review_app, login_max_failures=2, login_lockout_minutes=1)
    client = TestClient(create_app(app))
    for _ in range(2):
        login(client, "vera", "wrong-password-1")
    assert login(client, "vera").status_code == 400
    assert [e["target"] for e in _locks(app)] == ["user:vera"]
    assert login(client, "rita").status_code == 303  # a lock is per account


def _session_set_cookie(client: TestClient) -> str:
    token = csrf_of(client.get("/causes").text)
    response = client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    headers = [v for k, v in response.headers.multi_items() if k == "set-cookie"]
    match = [h.lower() for h in headers if h.startswith(f"{SESSION_COOKIE}=")]
    assert match, headers
    return match[0]


def test_passwords_are_stored_as_argon2_hashes(review_app: App) -> None:
    with review_app.engine.connect() as conn:
        stored = conn.execute(select(USERS.c.password_hash).where(USERS.c.username == "rita")).scalar_one()
    assert stored.startswith("$argon2id$")
    assert PASSWORDS["rita"] not in stored


def test_add_user_checks(review_app: App) -> None:
    with pytest.raises(UserError, match="already exists"):
        add_user(review_app.engine, "Rita", "long-enough-password", "viewer")
    with pytest.raises(UserError, match="at least 12"):
        add_user(review_app.engine, "new", "short", "viewer")
    with pytest.raises(UserError, match="role"):
        add_user(review_app.engine, "new", "long-enough-password", "root")


def test_users_add_command_reads_the_password_from_stdin(tmp_path: Path) -> None:
    config = write_config_file(tmp_path)
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["--config", str(config), "users", "add", "carol", "--role", "reviewer"],
        input="a-good-password-9\n",
    )
    assert result.exit_code == 0, result.output
    listed = runner.invoke(cli, ["--config", str(config), "users", "list"])
    assert "carol" in listed.output and "reviewer" in listed.output
    as_json = runner.invoke(cli, ["--config", str(config), "users", "list", "--json"])
    assert as_json.exit_code == 0, as_json.output
    [carol] = json.loads(as_json.output)
    assert carol["username"] == "carol" and carol["role"] == "reviewer"
    assert carol["disabled"] is False and carol["locked"] is False and carol["last_login_at"] is None
    assert "password_hash" not in carol and datetime.fromisoformat(carol["created_at"]).tzinfo
    again = runner.invoke(
        cli, ["--config", str(config), "users", "add", "carol"], input="a-good-password-9\n"
    )
    assert again.exit_code != 0


def test_session_secret_is_generated_once_beside_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "etc" / "config.yaml"
    config.parent.mkdir()
    data = base_config(tmp_path / "data")
    del data["review"]  # the default: review-session.key beside the config file
    config.write_text(yaml.safe_dump(data))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(config).section(ReviewSettings)
    first = settings.secret()
    assert first == settings.secret()
    key = config.parent / "review-session.key"
    assert key.read_text().strip() == first
    assert key.stat().st_mode & 0o077 == 0
    assert not any(elsewhere.iterdir()) and not (tmp_path / "data").exists()


def test_session_key_file_is_never_relative_to_the_current_directory() -> None:
    with pytest.raises(ValueError, match="must be an absolute path"):
        ReviewSettings().secret()


def test_session_secret_file_key_is_read_by_the_config_loader(tmp_path: Path) -> None:
    secret = tmp_path / "s"
    secret.write_text("x" * 40 + "\n")
    settings = parse_settings(base_config(tmp_path, review={"session_secret_file": str(secret)}))
    assert settings.section(ReviewSettings).session_secret == "x" * 40


def test_a_stranger_cannot_keep_an_account_locked(review_app: App) -> None:
    """Failures are limited per client address: once over budget, the stranger is refused
    without a password check and no longer counts against the account."""
    app = _with_review(review_app, login_max_failures_per_client=7)
    web = create_app(app)
    stranger = TestClient(web, client=("203.0.113.7", 40000))
    for _ in range(5):
        assert login(stranger, "rita", "wrong-password-1").status_code == 400
    assert len(_locks(app)) == 1  # the account lock still works
    with app.engine.begin() as conn:  # the 15 minutes pass
        conn.execute(update(USERS).values(locked_until=datetime.now(UTC) - timedelta(seconds=1)))
    for _ in range(2):
        assert login(stranger, "rita", "wrong-password-1").status_code == 400
    for _ in range(5):  # would lock the account again; the address is over its budget
        refused = login(stranger, "rita", "wrong-password-1")
        assert refused.status_code == 429 and "Too many failed sign-ins" in refused.text
    assert login(stranger, "rita").status_code == 429  # even the right password, from there
    assert len(_locks(app)) == 1 and _user(app, "rita")["failed_logins"] == 2
    rita = TestClient(web, client=("198.51.100.20", 40000))
    assert login(rita, "rita").status_code == 303  # the owner signs in from elsewhere
    other = TestClient(web, client=("198.51.100.21", 40000))
    assert login(other, "vera", "wrong-password-1").status_code == 400  # other addresses: as before
