"""Configured sources → adapter objects, through the feed registry (registry_adapter.feeds)."""

from __future__ import annotations

from pathlib import Path

from adapters.base import Source
from adapters.files import FilesSource
from registry_adapter.feeds import build_source, is_pulled

__all__ = ["build_source", "import_source", "is_pulled"]


def import_source(name: str, paths: list[Path]) -> Source:
    """Files given on the command line (staff loading what a hospital sent)."""
    return FilesSource(name, paths)
