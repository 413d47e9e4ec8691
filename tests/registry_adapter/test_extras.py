"""The table of optional extras agrees with pyproject.toml and the plugin modules."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import packages_distributions

from registry_adapter.cli import _OPTIONAL_COMMANDS
from registry_adapter.extras import EXTRA_MODULES
from tests.conftest import ROOT


def test_each_extra_lists_the_import_names_of_its_distributions() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    by_dist: dict[str, set[str]] = {}
    for module, dists in packages_distributions().items():
        for dist in dists:
            by_dist.setdefault(re.sub(r"[-_.]+", "-", dist).lower(), set()).add(module)
    for extra, modules in EXTRA_MODULES.items():
        dists = {re.sub(r"[-_.]+", "-", re.split(r"[<>=\[ ;]", req)[0]).lower() for req in extras[extra]}
        provided = set().union(*(by_dist[d] for d in dists)) - {"_cffi_backend"}
        assert {m for m in provided if not m.startswith("_")} == set(modules), extra


def test_stand_in_commands_match_the_plugin_commands() -> None:
    import importlib

    for module_name, names in _OPTIONAL_COMMANDS.items():
        commands = importlib.import_module(module_name).COMMANDS
        assert {c.name for c in commands} == set(names)
