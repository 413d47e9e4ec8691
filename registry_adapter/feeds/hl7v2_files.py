"""Feed type ``hl7v2_files``: a drop folder of HL7 v2 message files (``adapters.hl7v2.drop``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from adapters.base import Source
from adapters.hl7v2.drop import Hl7DropFolder
from registry_adapter.feeds import FeedType
from registry_adapter.feeds.base import ConfigError, FeedSettings

if TYPE_CHECKING:
    from registry_adapter.app import App


class Hl7FilesSource(FeedSettings):
    """A folder where HL7 v2 message files are dropped; processed files are moved away."""

    type: Literal["hl7v2_files"]
    name: str
    path: Path
    archive: Path | None = None  # default: <path>/archive
    quarantine: Path | None = None  # default: <path>/quarantine
    patterns: tuple[str, ...] = ("*.hl7", "*.txt", "*.er7", "*.msg")


def build(cfg: Hl7FilesSource, app: App) -> Source:
    if not cfg.path.exists():
        raise ConfigError(f"sources.{cfg.name}.path: folder {cfg.path} does not exist")
    return Hl7DropFolder(
        cfg.name, cfg.path, archive=cfg.archive, quarantine=cfg.quarantine, patterns=cfg.patterns
    )


FEED = FeedType("hl7v2_files", Hl7FilesSource, build, "HL7 v2 message files in a drop folder")
