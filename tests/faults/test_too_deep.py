"""``too_deep`` decides the same with its fast path (count of openers) as with the walk."""

from __future__ import annotations

from typing import Any

import pytest

from registry_types.json_limits import MAX_DEPTH, too_deep


def _nested(depth: int, kind: type) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value} if kind is dict else [value]
    return value


@pytest.mark.parametrize("kind", [dict, list])
def test_depth_limit_is_exact(kind: type) -> None:
    assert not too_deep(_nested(MAX_DEPTH, kind))
    assert too_deep(_nested(MAX_DEPTH + 1, kind))
    assert too_deep(_nested(300, kind))  # past what orjson serialises: the walk decides


def test_many_openers_but_shallow_is_not_too_deep() -> None:
    # Over the fast path's count (objects side by side, braces inside strings) yet 3 deep.
    wide = {"item": [{"text": "{[" * 80} for _ in range(MAX_DEPTH)]}
    assert not too_deep(wide)
