"""The one interface every feed implements.

A source turns a hospital feed into a stream of FHIR R4 resources (plain JSON dicts). The
pipeline stages what a source yields and, at each ``Checkpoint``, commits the staged records
together with the source's state (watermarks, cursors) in one transaction. A source therefore
never persists anything itself: if the process dies between checkpoints, the next run starts
from the last committed state and re-yields what was lost, and staging dedups by content hash.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from registry_types.records import JSONDict, Record, RecordError

# Record and RecordError live at the bottom of the house because the store keeps them too;
# they are part of this interface and re-exported here.
__all__ = [
    "Checkpoint",
    "Deleted",
    "Inventory",
    "Item",
    "JSONDict",
    "Record",
    "RecordError",
    "Source",
    "SourceContext",
    "SourceIncomplete",
]


class SourceIncomplete(Exception):
    """Raised by a source after it yielded all it could, when some part had to stop.

    Everything yielded before is complete and checkpointed; the pipeline maps it and records
    the run as ``partial`` with this message, and the next run resumes the stopped parts.
    The message names resource types, pages and ids, never patient data.
    """


@dataclass(frozen=True, slots=True)
class Deleted:
    """The source says a resource is gone (FHIR history DELETE, v2 cancel)."""

    resource_type: str
    resource_id: str
    origin: str


@dataclass(frozen=True, slots=True)
class Inventory:
    """Every id the source still holds for a resource type, from a complete read (a full
    sync or export): staged records of the type that are not listed were deleted there."""

    resource_type: str
    resource_ids: frozenset[str]
    origin: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Everything yielded so far may be committed together with ``state``.

    ``state`` replaces the source's stored state (e.g. ``{"Procedure": "2024-05-01T..."}``);
    ``progress`` is free text for the progress display (never PHI).
    """

    state: Mapping[str, Any]
    progress: str | None = None


Item = Record | RecordError | Deleted | Inventory | Checkpoint


@dataclass(slots=True)
class SourceContext:
    """What a run tells a source: its last committed state and the run's options."""

    state: Mapping[str, Any] = field(default_factory=dict)
    full: bool = False
    since: str | None = None
    resource_types: tuple[str, ...] = ()


@runtime_checkable
class Source(Protocol):
    """A feed. ``name`` is the configured source name; it keys staging and sync state."""

    name: str

    def read(self, ctx: SourceContext) -> Iterator[Item]:
        """Yield records, errors and checkpoints; end with a final checkpoint."""
        ...
