"""Earlier versions of a site's code-map files, kept so that a code added in review can be
undone: before each edit the file is copied to ``<site folder>/.versions/`` (a folder the
code-map loader does not read), and "Undo" puts that copy back and re-processes.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

VERSIONS = ".versions"


def keep_version(table: Path) -> Path:
    """Copy ``table`` (a code-map CSV) aside before it is edited; returns the copy."""
    folder = table.parent / VERSIONS
    folder.mkdir(mode=0o700, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    kept = folder / f"{table.name}.{stamp}"
    shutil.copy2(table, kept)
    return kept


def restore_version(table: Path, version_name: str) -> None:
    """Put a kept version back in place of ``table`` (the current file is kept as a version too)."""
    kept = table.parent / VERSIONS / Path(version_name).name  # a bare file name, never a path
    if not kept.is_file() or not kept.name.startswith(table.name + "."):
        raise FileNotFoundError(f"no kept version {Path(version_name).name} of {table.name}")
    keep_version(table)
    shutil.copy2(kept, table)
