"""A stand-in for the pipeline: commits what a source yielded at each Checkpoint.

Items after the last Checkpoint of a run that raised are dropped, as a crash would drop them,
and the next run starts from the last committed state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from adapters.base import Checkpoint, Deleted, Inventory, Record, RecordError, Source, SourceContext


@dataclass
class Committed:
    records: list[Record] = field(default_factory=list)
    errors: list[RecordError] = field(default_factory=list)
    deleted: list[Deleted] = field(default_factory=list)
    inventories: list[Inventory] = field(default_factory=list)
    state: Mapping[str, Any] = field(default_factory=dict)
    progress: list[str] = field(default_factory=list)
    crashes: list[BaseException] = field(default_factory=list)
    runs: int = 0

    def resource_keys(self) -> list[str]:
        return [f"{r.resource['resourceType']}/{r.resource['id']}" for r in self.records]

    def versions(self) -> dict[str, set[bytes]]:
        """Each resource key -> the distinct contents committed for it."""
        out: dict[str, set[bytes]] = {}
        for r in self.records:
            key = f"{r.resource['resourceType']}/{r.resource['id']}"
            out.setdefault(key, set()).add(orjson.dumps(r.resource, option=orjson.OPT_SORT_KEYS))
        return out


def run_once(source: Source, into: Committed, ctx: SourceContext | None = None,
             stop_after_checkpoints: int | None = None) -> bool:
    """One run from ``into.state``; True when the source finished without raising."""
    ctx = ctx or SourceContext(state=into.state)
    ctx.state = into.state
    pending: list[Record | RecordError | Deleted | Inventory] = []
    into.runs += 1
    seen = 0
    try:
        for item in source.read(ctx):
            if isinstance(item, Checkpoint):
                for p in pending:
                    if isinstance(p, Record):
                        into.records.append(p)
                    elif isinstance(p, RecordError):
                        into.errors.append(p)
                    elif isinstance(p, Inventory):
                        into.inventories.append(p)
                    else:
                        into.deleted.append(p)
                pending = []
                into.state = orjson.loads(orjson.dumps(dict(item.state)))
                if item.progress:
                    into.progress.append(item.progress)
                seen += 1
                if stop_after_checkpoints is not None and seen >= stop_after_checkpoints:
                    return False  # simulated kill right after a commit
            else:
                pending.append(item)
    except Exception as exc:  # a crash: uncommitted items are lost
        into.crashes.append(exc)
        return False
    assert not pending, "a source must end with a Checkpoint"
    return True


def run_until_done(source: Source, into: Committed | None = None, max_runs: int = 6,
                   ctx: SourceContext | None = None) -> Committed:
    into = into or Committed()
    for _ in range(max_runs):
        if run_once(source, into, ctx):
            return into
    raise AssertionError(f"source did not finish in {max_runs} runs: {into.crashes}")
