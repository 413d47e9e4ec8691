"""Mapping shared with child processes (registry_adapter/mapping_pool.py) leaves the registry
exactly as mapping in the calling process does, however the children are started."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path

import pytest

from registry_adapter import mapping_pool
from registry_adapter.app import App
from registry_adapter.config import ConfigError, parse_settings
from registry_adapter.pipeline import Pipeline
from tests.conftest import base_config
from tests.registry_adapter.test_fast_path_equivalence import _adt, _import, _snapshot, feed  # noqa: F401


def test_auto_is_two_workers_where_there_are_two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mapping_pool, "usable_cores", lambda: 2)
    assert mapping_pool.resolve_workers("auto") == 2
    monkeypatch.setattr(mapping_pool, "usable_cores", lambda: 1)
    assert mapping_pool.resolve_workers("auto") == 1
    assert mapping_pool.resolve_workers(3) == 3


def test_mapping_workers_accepts_auto_and_integers(tmp_path: Path) -> None:
    assert parse_settings(base_config(tmp_path, mapping_workers="auto")).mapping_workers == "auto"
    assert parse_settings(base_config(tmp_path, mapping_workers=4)).mapping_workers == 4
    with pytest.raises(ConfigError):
        parse_settings(base_config(tmp_path, mapping_workers=0))


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_children_started_either_way_give_the_same_rows(
    make_app: Callable[..., App], tmp_path: Path, feed: Path, start: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if start not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {start} here")
    # Without fork the pool spawns its children (as on macOS and Windows).
    monkeypatch.setattr(mapping_pool.multiprocessing, "get_all_start_methods", lambda: [start])
    (feed / "adt.hl7").write_bytes(b"\n".join(_adt(i) for i in range(40)))
    one = make_app(f"sqlite:///{tmp_path / 'one.db'}", batch_size=40)
    _import(one, feed)
    pooled = make_app(f"sqlite:///{tmp_path / 'pooled.db'}", batch_size=40, mapping_workers=3)
    _import(pooled, feed)
    rows = _snapshot(one)
    assert _snapshot(pooled) == rows
    Pipeline(pooled).reprocess(everything=True)
    assert _snapshot(pooled) == rows
