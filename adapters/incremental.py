"""Incremental-loading state, in one place for every pull source: watermarks, the overlap
window, the start of an incremental run, and the per-file stamps of a folder.

The pipeline stores a source's state at each ``Checkpoint`` together with what the source
yielded before it (adapters/base.py), so resuming after a cut is "start again from the last
committed state". What the sources must agree on, and what lives here:

- FHIR instants are compared as instants (``Z`` and offsets, naive = UTC), never as strings;
- a run's lower bound: none for ``--full``, an explicit ``--since`` over the stored one;
- REST (``_lastUpdated``): the overlap re-reads ``overlap_seconds`` before the watermark to
  absorb clock skew and ties; with no overlap the watermark instant itself is re-read
  (``ge``), since resources sharing it may not all have been read;
- a REST type's watermark only moves past a page when pages arrive sorted and the result set
  did not shift under the traversal (:class:`TypeWatermark`), and never moves backwards;
- Bulk (``_since``): an export that left lines unread keeps the earlier window
  (:func:`earlier_bound`);
- files: a file counts as read when its size and modification time are those recorded after
  it was last read in full (:class:`FileStamps`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import orjson

from adapters.base import SourceContext

Comparator = Literal["gt", "ge"]
WatermarkEvent = Literal["unsorted", "shifted"]


def parse_instant(value: str) -> datetime:
    """A FHIR instant/dateTime as an aware datetime (no offset: UTC)."""
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def format_instant(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def later(a: str | None, b: str | None) -> str | None:
    """The later of two instants; a missing one is ignored (a high-water mark)."""
    if a is None or b is None:
        return a or b
    return a if parse_instant(a) >= parse_instant(b) else b


def earlier_bound(a: str | None, b: str | None) -> str | None:
    """The earlier of two lower bounds; a missing one means "no lower bound" and wins.

    Unparsable or naive-against-aware values keep ``a`` (the committed one): widening the
    window on a value we cannot read could skip nothing, narrowing it could."""
    if a is None or b is None:
        return None
    try:
        return a if datetime.fromisoformat(a) <= datetime.fromisoformat(b) else b
    except (TypeError, ValueError):
        return a


def copy_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A deep, JSON-shaped copy: what a checkpoint carries must not change after it is yielded."""
    return dict(orjson.loads(orjson.dumps(state))) if state else {}


def run_start(ctx: SourceContext, stored: str | None) -> str | None:
    """Where an incremental run starts: nothing for ``--full``, else ``--since`` or ``stored``."""
    if ctx.full:
        return None
    return ctx.since or stored


def last_updated_filter(
    ctx: SourceContext, watermark: str | None, overlap_seconds: float
) -> tuple[Comparator, str] | None:
    """The ``_lastUpdated`` filter (comparator, instant) for a REST read from ``watermark``."""
    if ctx.full:
        return None
    if ctx.since:
        return ("ge", ctx.since)  # an explicit --since wins over the stored watermark
    if watermark is None:
        return None
    if overlap_seconds <= 0:
        return ("ge", watermark)  # ties on the watermark instant must be re-read
    return ("gt", format_instant(parse_instant(watermark) - timedelta(seconds=overlap_seconds)))


class TypeWatermark:
    """The watermark of one resource type during one REST traversal.

    ``previous`` is the committed watermark the traversal started from. Each resource seen
    raises the high-water mark; what may be committed after a page is that mark only while the
    pages come sorted by ``_lastUpdated`` and no resource came back changed mid-traversal (a
    server paging by offset over a live result set can then have skipped a row); otherwise
    ``previous``, so the next run reads the window again.
    """

    def __init__(self, previous: str | None, *, sorted_pages: bool) -> None:
        self.previous = previous
        self.high = previous
        self.ordered = sorted_pages
        self.shifted = False
        self._last_seen: str | None = None
        self._versions: dict[str, str] = {}

    def see(self, resource_id: str, last_updated: str) -> tuple[WatermarkEvent, ...]:
        """Account for one resource; returns what went wrong, each the first time only."""
        events: list[WatermarkEvent] = []
        if self.ordered and self._last_seen and parse_instant(last_updated) < parse_instant(self._last_seen):
            self.ordered = False
            events.append("unsorted")
        self._last_seen = last_updated
        self.high = later(self.high, last_updated)
        if self._versions.setdefault(resource_id, last_updated) != last_updated and not self.shifted:
            self.shifted = True
            events.append("shifted")
        return tuple(events)

    @property
    def after_page(self) -> str | None:
        """What may be committed once a page's records are yielded."""
        return self.high if self.ordered and not self.shifted else self.previous

    @property
    def at_end(self) -> str | None:
        """What may be committed once the whole type was read (order no longer matters)."""
        return self.previous if self.shifted else self.high


class FileStamps:
    """Which files of a folder source were read in full, by size and modification time.

    Stored as ``{"files": {path: [size, mtime_ns]}}``; ``--full`` starts from none."""

    def __init__(self, ctx: SourceContext) -> None:
        self.done: dict[str, Any] = {} if ctx.full else dict(ctx.state.get("files", {}))

    @staticmethod
    def stamp(path: Path) -> list[int] | None:
        try:
            stat = path.stat()
        except OSError:
            return None  # vanished or unreadable: read it (and report it) every time
        return [stat.st_size, stat.st_mtime_ns]

    def unchanged(self, path: Path, stamp: list[int] | None) -> bool:
        return stamp is not None and self.done.get(str(path)) == stamp

    def mark_read(self, path: Path, stamp: list[int] | None) -> None:
        if stamp is not None:
            self.done[str(path)] = stamp

    def state(self) -> dict[str, Any]:
        return {"files": dict(self.done)}

