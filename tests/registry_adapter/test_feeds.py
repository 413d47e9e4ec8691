"""The feed registry: each source type is one module, found through its entry point."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest

from adapters.files import FilesSource as FilesReader
from adapters.hl7v2.drop import Hl7DropFolder
from registry_adapter.app import App
from registry_adapter.config import ConfigError, parse_settings
from registry_adapter.feeds import FeedType, build_source, feed_types, is_pulled
from registry_adapter.feeds.mllp import MllpSource
from registry_adapter.plugins import (
    AFTER_STORE,
    COMMANDS,
    DOCTOR,
    FEEDS,
    SERVICES,
    SETTINGS,
    declared_in_source_tree,
    plugins,
)

SITE = {"id": "site", "timezone": "UTC", "pseudonym_key": "k" * 32}


def test_every_shipped_feed_type_is_registered_by_its_module() -> None:
    found = feed_types()
    assert set(found) == {"files", "fhir_rest", "fhir_bulk", "mllp", "hl7v2_files"}
    for name, feed in found.items():
        assert isinstance(feed, FeedType) and feed.name == name
        # The model's ``type`` accepts exactly its registered name.
        assert feed.settings.model_fields["type"].annotation.__args__ == (name,)  # type: ignore[union-attr]
    assert [name for name, feed in found.items() if not feed.pulled] == ["mllp"]


def test_config_sources_validate_against_the_registered_models(tmp_path: Path) -> None:
    settings = parse_settings(
        {
            "site": SITE,
            "sources": [
                {"type": "files", "name": "drop", "path": str(tmp_path)},
                {"type": "hl7v2_files", "name": "v2", "path": str(tmp_path)},
                {"type": "mllp", "name": "listener", "port": 0},
            ],
        }
    )
    kinds = {s.name: type(s) for s in settings.sources}
    assert kinds == {n: feed_types()[s.type].settings for n, s in zip(kinds, settings.sources, strict=True)}
    assert [s.name for s in settings.sources if is_pulled(s)] == ["drop", "v2"]
    assert isinstance(settings.source("listener"), MllpSource)


def test_an_unknown_feed_type_is_a_config_error_naming_the_source() -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({"site": SITE, "sources": [{"type": "ftp", "name": "x"}]})
    assert "sources[0]" in str(err.value)
    for name in feed_types():
        assert name in str(err.value)  # the message lists the types that exist


def test_build_source_makes_pulled_feeds_and_refuses_a_pushed_one(sqlite_app: App, tmp_path: Path) -> None:
    settings = parse_settings(
        {
            "site": SITE,
            "sources": [
                {"type": "files", "name": "drop", "path": str(tmp_path)},
                {"type": "hl7v2_files", "name": "v2", "path": str(tmp_path)},
                {"type": "mllp", "name": "listener"},
                {"type": "files", "name": "gone", "path": str(tmp_path / "missing")},
            ],
        }
    )
    assert isinstance(build_source(settings.source("drop"), sqlite_app), FilesReader)
    assert isinstance(build_source(settings.source("v2"), sqlite_app), Hl7DropFolder)
    with pytest.raises(ConfigError, match="listen"):
        build_source(settings.source("listener"), sqlite_app)
    with pytest.raises(ConfigError, match=r"sources\.gone\.path"):
        build_source(settings.source("gone"), sqlite_app)


@pytest.mark.parametrize("group", [FEEDS, SETTINGS, COMMANDS, DOCTOR, AFTER_STORE, SERVICES])
def test_pyproject_declares_what_the_installed_metadata_lists(group: str) -> None:
    """A checkout whose metadata predates a new entry point falls back to pyproject.toml; both
    must list the same plug-ins (if this fails, run `make install`)."""
    declared = {(ep.name, ep.value) for ep in declared_in_source_tree(group)}
    assert declared
    assert declared == {(ep.name, ep.value) for ep in entry_points(group=group)}
    assert {p.name for p in plugins(group)} == {name for name, _ in declared}
