"""Sign-in, roles, session cookies and the ``users`` command."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from starlette.testclient import TestClient

from registry_adapter.app import App
from registry_adapter.cli import cli
from registry_adapter.config import parse_settings
from review.app import SESSION_COOKIE, create_app
from review.auth import USERS, UserError, add_user, set_user
from review.settings import ReviewSettings
from tests.conftest import base_config
from tests.review.conftest import PASSWORDS, csrf_of, login

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


def test_session_cookie_flags(review_app: App) -> None:
    client = TestClient(create_app(review_app))
    login(client, "rita")
    cookie = _session_set_cookie(client)
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert "secure" not in cookie.split(";")[-1] and "; secure" not in cookie


def test_secure_cookies_when_configured(review_app: App) -> None:
    settings = review_app.settings.model_copy(
        update={"review": review_app.settings.review.model_copy(update={"secure_cookies": True})}
    )
    secure = App(settings=settings, db_url=review_app.db_url)
    client = TestClient(create_app(secure), base_url="https://testserver")
    login(client, "rita")
    assert "; secure" in _session_set_cookie(client)


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
    import yaml

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base_config(tmp_path)))
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["--config", str(config), "users", "add", "carol", "--role", "reviewer"],
        input="a-good-password-9\n",
    )
    assert result.exit_code == 0, result.output
    listed = runner.invoke(cli, ["--config", str(config), "users", "list"])
    assert "carol" in listed.output and "reviewer" in listed.output
    again = runner.invoke(
        cli, ["--config", str(config), "users", "add", "carol"], input="a-good-password-9\n"
    )
    assert again.exit_code != 0


def test_session_secret_is_generated_once_beside_the_database(tmp_path: Path) -> None:
    settings = ReviewSettings()
    db_url = f"sqlite:///{tmp_path / 'db' / 'registry.db'}"
    first = settings.secret(db_url)
    assert first == settings.secret(db_url)
    key = tmp_path / "db" / "review-session.key"
    assert key.read_text().strip() == first
    assert key.stat().st_mode & 0o077 == 0


def test_session_secret_file_key_is_read_by_the_config_loader(tmp_path: Path) -> None:
    secret = tmp_path / "s"
    secret.write_text("x" * 40 + "\n")
    settings = parse_settings(base_config(tmp_path, review={"session_secret_file": str(secret)}))
    assert settings.review.session_secret == "x" * 40
