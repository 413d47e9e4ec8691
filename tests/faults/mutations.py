"""Seeded mutations of real FHIR resources and HL7 v2 messages, for the fuzz tests.

Byte-level (flips, cuts, inserted bytes, invalid UTF-8) and structure-level (a node replaced
by another JSON type, deep nesting, huge strings; v2 segments dropped, repeated, separators
changed) so both the parsers and what comes after them are exercised.
"""

from __future__ import annotations

import json
import random
from typing import Any

_ODD_BYTES = [b"\x00", b"\xff", b"\xc3", b"\xef\xbb\xbf", b"\x0b", b"\x1c", b"\r", b"\n", b'"', b"\\",
              b"{", b"[", b"]", b"}", b"|", b"^", b"~", b"&", b"\xed\xa0\x80", b"[" * 1100]
_ODD_VALUES: list[Any] = [
    None, True, 0, -1, 1e308, "", " ", "x" * 5000, [], {}, [None], {"": {}},
    "2024-13-45", "9999-12-31T25:61:61Z", "\u0000", "\ud7ff", "Patient/", "#", "urn:uuid:",
]


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    kind = rng.randrange(5)
    if not data:
        return rng.choice(_ODD_BYTES)
    pos = rng.randrange(len(data))
    if kind == 0:  # flip a byte
        return data[:pos] + bytes([rng.randrange(256)]) + data[pos + 1 :]
    if kind == 1:  # cut short
        return data[:pos]
    if kind == 2:  # insert odd bytes
        return data[:pos] + rng.choice(_ODD_BYTES) * rng.randint(1, 3) + data[pos:]
    if kind == 3:  # drop a span
        return data[:pos] + data[pos + rng.randint(1, 40) :]
    return data[:pos] + data[pos : pos + rng.randint(1, 200)] * 2 + data[pos:]  # repeat a span


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _nodes(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _nodes(child, (*path, index))
    return found


def _deep(levels: int) -> Any:
    node: Any = {"valueString": "leaf"}
    for _ in range(levels):
        node = {"extension": [node]}
    return node


def mutate_resource(rng: random.Random, resource: dict[str, Any]) -> dict[str, Any] | list[Any] | Any:
    res = json.loads(json.dumps(resource))
    paths = _nodes(res)
    path = rng.choice(paths[1:]) if len(paths) > 1 else ()
    kind = rng.randrange(6)
    if kind == 0:
        new: Any = rng.choice(_ODD_VALUES)
    elif kind == 1:
        new = _deep(rng.choice([30, 60, 150, 400]))  # depth twice that: an object and an array a level
    elif kind == 2:
        new = rng.choice([resource.get("id"), resource.get("resourceType"), {"reference": "Patient/x"}])
    elif kind == 3:  # meta games: versions out of order, broken instants
        res["meta"] = rng.choice([
            {"versionId": str(rng.randint(0, 5)), "lastUpdated": "2020-01-01T00:00:00Z"},
            {"lastUpdated": 5}, [], {"versionId": "x" * 100},
        ])
        return res
    elif kind == 4 and path:  # delete a node
        parent = res
        for step in path[:-1]:
            parent = parent[step]
        del parent[path[-1]]
        return res
    else:
        new = [res] if rng.random() < 0.5 else {"resourceType": "Bundle", "entry": [{"resource": res}, 7]}
        return new
    if not path:
        return new
    parent = res
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = new
    return res


def mutate_fhir_line(rng: random.Random, resource: dict[str, Any]) -> bytes:
    if rng.random() < 0.4:
        return mutate_bytes(rng, json.dumps(resource).encode())
    return json.dumps(mutate_resource(rng, resource)).encode()


def mutate_v2(rng: random.Random, message: bytes) -> bytes:
    segments = message.replace(b"\n", b"\r").split(b"\r")
    segments = [s for s in segments if s]
    kind = rng.randrange(7)
    if kind <= 1 or len(segments) < 2:
        return mutate_bytes(rng, message)
    i = rng.randrange(len(segments))
    if kind == 2:  # drop a segment (MSH too)
        del segments[i]
    elif kind == 3:  # repeat one
        segments.insert(i, segments[i])
    elif kind == 4:  # one field replaced by something odd
        fields = segments[i].split(b"|")
        j = rng.randrange(len(fields))
        fields[j] = rng.choice([b"", b"^^^^^^^^", b"~" * 50, b"\\X00\\", b"&&&", b"9" * 300,
                                b"20241345", b"\xff\xfe", b"x" * 70000 if rng.random() < 0.02 else b"y"])
        segments[i] = b"|".join(fields)
    elif kind == 5:  # separators changed
        segments[0] = segments[0][:3] + rng.choice([b"#", b"^", b"", b"|\r", b"||"]) + segments[0][4:]
    else:  # fields cut off
        segments[i] = segments[i][: rng.randrange(len(segments[i]) + 1)]
    return b"\r".join(segments) + b"\r"
