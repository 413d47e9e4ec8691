"""The fast pre-check never calls a record clean that full validation finds fault with.

Sound (True ⇒ fhir.resources finds nothing) is what keeps the registry identical to the strict
path; it is checked on every record of the sample feed and on thousands of mutations of them.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import orjson
import pytest

from adapters.fastcheck import certainly_clean
from adapters.validation import validate
from tests.conftest import SAMPLE_FEED


def _feed() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(SAMPLE_FEED.glob("*.ndjson")):
        for line in path.read_bytes().splitlines():
            try:
                res = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # the feed's deliberately broken line
            out.append(res)
    return out


FEED = _feed()

# Values a hospital feed gets wrong: wrong JSON kinds, empties, nulls, whitespace, bad dates.
REPLACEMENTS: list[Any] = [
    "", " ", "a b", " padded", "x\n", None, [], {}, [None], 0, -1, 1.5, True, "true", "12",
    "2025-02-30", "2025-13-01", "2025-03-14T08:30:00", "2025-03-14T24:00:00Z", "2025-03-14T08:30Z",
    "2025-03-14T08:30:60+01:00", "0000", "not a date", "urn:oid:1", "has space", {"x": 1},
    [{"text": "t"}], "Patient/", "#c1", "a" * 65,
]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            if prefix or key != "resourceType":
                out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


def _set(res: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node: Any = res
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value


def _drop(res: dict[str, Any], path: tuple[Any, ...]) -> None:
    node: Any = res
    for step in path[:-1]:
        node = node[step]
    if isinstance(node, dict):
        node.pop(path[-1])
    else:
        node.pop(path[-1])


def test_every_clean_sample_record_is_recognised_clean() -> None:
    assert len(FEED) > 100
    clean = [r for r in FEED if not validate(r)]
    assert clean, "the sample feed has clean records"
    missed = [f"{r['resourceType']}/{r['id']}" for r in clean if not certainly_clean(r)]
    assert missed == []


@pytest.mark.parametrize("seed", range(4))
def test_mutated_records_are_never_called_clean_wrongly(seed: int) -> None:
    rng = random.Random(seed)
    unsound: list[str] = []
    checked = refused = 0
    for res in rng.sample(FEED, min(150, len(FEED))):
        paths = _paths(res)
        for _ in range(6):
            mutated = copy.deepcopy(res)
            path = rng.choice(paths)
            action = rng.random()
            if action < 0.15:
                _drop(mutated, path)
            elif action < 0.25:
                parent = path[:-1]
                if parent and isinstance(path[-1], str):
                    _set(mutated, (*parent, path[-1] + "X"), "extra")  # an unknown element
                else:
                    _set(mutated, path, rng.choice(REPLACEMENTS))
            else:
                _set(mutated, path, copy.deepcopy(rng.choice(REPLACEMENTS)))
            checked += 1
            if certainly_clean(mutated):
                if validate(mutated):
                    unsound.append(f"{res['resourceType']}/{res['id']} at {path}")
            else:
                refused += 1
    assert unsound == []
    assert refused > checked // 4  # the mutations really do break records


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Procedure", "id": "p1", "status": "completed"},  # subject missing
        {"resourceType": "Procedure", "id": "p1", "subject": {"reference": "Patient/1"}},  # status missing
        {"resourceType": "Procedure", "id": "p1", "status": "completed",
         "subject": {"reference": "Patient/1"},
         "performedDateTime": "2025-03-14", "performedString": "yesterday"},  # two choices
        {"resourceType": "Procedure", "id": "p1", "status": "done", "subject": {"reference": "Patient/1"}},
        {"resourceType": "Patient", "id": "p1", "birthDate": "1970-02-30"},
        {"resourceType": "Patient", "id": "p1", "_birthDate": {"extension": []}},
        {"resourceType": "Patient", "id": "p1", "contained": [{"resourceType": "Patient", "id": "c"}]},
        {"resourceType": "NoSuchType", "id": "x"},
        {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "IMP"},
         "period": {"start": "2025-03-14T08:30:00"}},  # a naive time: the full check warns
    ],
)
def test_records_with_faults_take_the_full_check(resource: dict[str, Any]) -> None:
    assert not certainly_clean(resource)
