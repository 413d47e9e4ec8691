"""Feed type ``files``: FHIR NDJSON and Bundle files in a folder (``adapters.files``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from adapters.base import Source
from adapters.files import FilesSource as FilesReader
from registry_adapter.feeds import FeedType
from registry_adapter.feeds.base import ConfigError, FeedSettings

if TYPE_CHECKING:
    from registry_adapter.app import App


class FilesSource(FeedSettings):
    type: Literal["files"]
    name: str
    path: Path
    # Glob patterns inside path; NDJSON and Bundle JSON are recognised by content.
    patterns: tuple[str, ...] = ("**/*.ndjson", "**/*.json", "**/*.ndjson.gz")


def build(cfg: FilesSource, app: App) -> Source:
    if not cfg.path.exists():
        raise ConfigError(f"sources.{cfg.name}.path: folder {cfg.path} does not exist")
    return FilesReader(cfg.name, [cfg.path], cfg.patterns)


FEED = FeedType("files", FilesSource, build, "FHIR NDJSON / Bundle files in a folder")
