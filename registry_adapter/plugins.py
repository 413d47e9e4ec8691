"""Plug-ins: what the installed packages add to the adapter, found through entry points.

``pyproject.toml`` declares them under ``[project.entry-points."spine_registry_adapter.*"]``:

- ``spine_registry_adapter.feeds``: source types (``registry_adapter.feeds.FeedType``), one
  module each; the ``type:`` of a source in config.yaml picks one;
- ``spine_registry_adapter.settings``: top-level config sections owned by a package (its
  pydantic model; ``reminders``, ``scheduler``, ``review``), composed into ``Settings``;
- ``spine_registry_adapter.commands``: modules whose ``COMMANDS`` join the command line;
- ``spine_registry_adapter.doctor``: extra ``registry-adapter doctor`` checks;
- ``spine_registry_adapter.after_store``: functions ``(app, reason, since)`` run after a
  sync, an import or a re-process stored data (the scheduler plans reminders there); ``since``
  is when the run started: the rows it stored (cases, staged records) are stamped at or after
  it, so a plug-in redoes only what the run touched;
- ``spine_registry_adapter.services``: ``make_service(app)`` functions of background services
  the daemon runs beside its jobs (the MLLP listener, the review web UI).

Nothing here names a plug-in module: a package adds one by declaring the entry point
(``pip install -e .`` refreshes the installed declarations of a source checkout; until then a
checkout falls back to what its ``pyproject.toml`` declares).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

FEEDS = "spine_registry_adapter.feeds"
SETTINGS = "spine_registry_adapter.settings"
COMMANDS = "spine_registry_adapter.commands"
DOCTOR = "spine_registry_adapter.doctor"
AFTER_STORE = "spine_registry_adapter.after_store"
SERVICES = "spine_registry_adapter.services"


class PluginsMissing(RuntimeError):
    """No plug-in of a group that must have some: the package's metadata is missing or stale."""


@dataclass(frozen=True)
class Plugin:
    name: str
    value: str  # "module:attribute", for messages
    entry_point: EntryPoint

    def load(self) -> object:
        return self.entry_point.load()


def declared_in_source_tree(group: str) -> list[EntryPoint]:
    """The entry points ``pyproject.toml`` declares, when running from a source checkout whose
    installed metadata predates them (a new group added since the last ``pip install -e .``)."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        declared = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return []
    table = declared.get("project", {}).get("entry-points", {}).get(group, {})
    return [EntryPoint(name, value, group) for name, value in table.items()]


def plugins(group: str, *, required: bool = False) -> list[Plugin]:
    """The entry points of ``group``, by name (so the order does not depend on install order)."""
    found = sorted(entry_points(group=group) or declared_in_source_tree(group), key=lambda ep: ep.name)
    if required and not found:
        raise PluginsMissing(
            f"no {group} entry points are installed: reinstall the package (pip install -e .) "
            "so its metadata lists them"
        )
    # The same distribution installed twice (an editable and a built copy) lists each once.
    unique = {ep.name: ep for ep in found}
    return [Plugin(name, ep.value, ep) for name, ep in unique.items()]
