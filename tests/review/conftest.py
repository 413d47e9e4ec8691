"""A registry store filled by the real pipeline from the sample feed, with review users."""

from __future__ import annotations

import importlib.util
import re
import shutil
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from starlette.testclient import TestClient

from adapters.base import SourceContext
from mappings.codemaps import BUNDLED
from registry_adapter.app import App
from registry_adapter.pipeline import Pipeline
from registry_adapter.sources import build_source
from review.app import create_app
from review.auth import add_user

PASSWORDS = {"rita": "reviewer-pass-123", "vera": "viewer-pass-1234", "adam": "admin-pass-12345"}
ROLES = {"rita": "reviewer", "vera": "viewer", "adam": "admin"}
UNLISTED_CAUSE = "6b3b8cb49b505af2"  # codemap.unmapped_code, cpt|22899, mapping procedure
# What a coder enters to map that code (CPT 22899) in the add-code form.
UNLISTED_CODE_VALUES = {
    "category": "other_lumbar_fusion",
    "module": "lumbar",
    "role": "index",
    "rank": "10",
    "revision": "false",
    "label": "Unlisted procedure, spine",
}
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def fill(app: App) -> None:
    """Sync the sample feed through the real pipeline and add one user per role."""
    for cfg in app.settings.sources:
        Pipeline(app).ingest(build_source(cfg, app), SourceContext(full=True))
    for name, password in PASSWORDS.items():
        add_user(app.engine, name, password, ROLES[name])


@pytest.fixture
def site_codemaps(tmp_path: Path) -> Path:
    """A writable copy of the bundled code maps, configured as the site's folder."""
    dest = tmp_path / "site-codemaps"
    shutil.copytree(BUNDLED, dest)
    return dest


@pytest.fixture
def make_review_app(make_app: Callable[..., App], site_codemaps: Path, tmp_path: Path) -> Callable[..., App]:
    """A filled store (SQLite unless a database URL is given) whose site code maps are a copy."""

    def factory(db_url: str | None = None) -> App:
        app = make_app(
            db_url,
            mappings={"codemaps": str(site_codemaps)},
            review={"session_secret_file": str(_secret(tmp_path)), "page_size": 5},
        )
        fill(app)
        return app

    return factory


@pytest.fixture
def review_app(make_review_app: Callable[..., App]) -> App:
    return make_review_app()


def _secret(tmp: Path) -> Path:
    path = tmp / "session.secret"
    path.write_text("s" * 48)
    return path


def csrf_of(html: str) -> str:
    match = TOKEN.search(html)
    assert match, "the page has no CSRF token"
    return match.group(1)


def login(client: TestClient, username: str, password: str | None = None) -> Any:
    token = csrf_of(client.get("/login").text)
    return client.post(
        "/login",
        data={"username": username, "password": password or PASSWORDS[username], "csrf_token": token},
        follow_redirects=False,
    )


@pytest.fixture
def client_for(review_app: App) -> Callable[[str | None], TestClient]:
    """A browser-like client, signed in as the given user (or not signed in)."""
    web = create_app(review_app)

    def make(username: str | None) -> TestClient:
        client = TestClient(web, base_url="http://testserver")
        if username:
            assert login(client, username).status_code == 303
        return client

    return make


# -- a store filled from the sample feed dated to today (the coordinator's workspace) ----------

GENERATOR = Path(__file__).resolve().parents[2] / "examples" / "generate_sample_feed.py"


def generator() -> ModuleType:
    """examples/generate_sample_feed.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("generate_sample_feed", GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def site_today(app: App) -> date:
    return datetime.now(app.settings.site.tz).date()


@pytest.fixture
def today_feed(tmp_path: Path) -> Path:
    """The sample feed as `make demo` writes it: dated as exported today."""
    out = tmp_path / "demo-feed"
    gen = generator()
    gen.write(gen.build(40, 20251101, datetime.now(gen.TZ).date()), out)
    return out


@pytest.fixture
def today_app(make_app: Callable[..., App], today_feed: Path, site_codemaps: Path, tmp_path: Path) -> App:
    """The demo store: synced from today's feed, reminders planned, one user per role; code-map
    edits go to a copy of the bundled code maps configured as the site's folder."""
    from scheduler.replan import replan

    app = make_app(
        mappings={"codemaps": str(site_codemaps)},
        sources=[{"name": "sample", "type": "files", "path": str(today_feed)}],
        review={"session_secret_file": str(_secret(tmp_path)), "page_size": 50},
    )
    fill(app)
    replan(app, "test")
    return app
