"""``too_deep`` (orjson's nesting limit, shifted to ours) agrees with the exact walk."""

from __future__ import annotations

from typing import Any

import pytest

from registry_types.json_limits import MAX_DEPTH, _walk_too_deep, too_deep


def nested(depth: int, leaf: Any, kind: str) -> Any:
    value = leaf
    for level in range(depth):
        value = [value] if kind[level % len(kind)] == "l" else {"a": value, "b": 1}
    return value


@pytest.mark.parametrize("limit", [1, 2, 10, MAX_DEPTH, 253, 254, 300])
@pytest.mark.parametrize("leaf", [1, "x", None, [], {}, (1,), ((),)])
@pytest.mark.parametrize("kind", ["l", "d", "ld"])
def test_agrees_with_the_walk_around_the_limit(limit: int, leaf: Any, kind: str) -> None:
    for depth in {0, 1, limit - 2, limit - 1, limit, limit + 1, limit + 2, 260}:
        if depth < 0:
            continue
        value = nested(depth, leaf, kind)
        assert too_deep(value, limit) == _walk_too_deep(value, limit), (limit, depth)


def test_what_orjson_cannot_write_is_walked() -> None:
    # A big integer, a set, a non-string key: orjson refuses them, the walk still answers.
    for odd in (2**70, {1, 2}, {1: "x"}):
        assert too_deep(nested(MAX_DEPTH - 1, odd, "d")) is False
        assert too_deep(nested(MAX_DEPTH + 1, odd, "d")) is True


def test_the_default_limit() -> None:
    assert too_deep(nested(MAX_DEPTH, 1, "ld")) is False
    assert too_deep(nested(MAX_DEPTH + 1, 1, "ld")) is True
