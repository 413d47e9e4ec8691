"""adapters/incremental.py: the one owner of watermarks, overlap and run starts for REST, Bulk
and files (the sources' own behaviour is pinned by tests/adapters/test_source_conformance.py)."""

from __future__ import annotations

import os
from pathlib import Path

from adapters.base import SourceContext
from adapters.incremental import (
    FileStamps,
    TypeWatermark,
    copy_state,
    earlier_bound,
    last_updated_filter,
    later,
    run_start,
)


def test_instants_compare_as_instants_not_strings() -> None:
    # "2025-01-01T01:00:00+02:00" is before "2025-01-01T00:00:00Z" though it sorts after it.
    assert later("2025-01-01T01:00:00+02:00", "2025-01-01T00:00:00Z") == "2025-01-01T00:00:00Z"
    assert later(None, "2025-01-01T00:00:00Z") == "2025-01-01T00:00:00Z"
    assert earlier_bound("2025-01-01T01:00:00+02:00", "2025-01-01T00:00:00+00:00") == (
        "2025-01-01T01:00:00+02:00"
    )
    assert earlier_bound(None, "2025-01-01T00:00:00Z") is None  # no bound wins
    assert earlier_bound("garbage", "2025-01-01T00:00:00Z") == "garbage"  # the committed one


def test_run_start_and_last_updated_filter() -> None:
    stored = "2025-03-01T10:00:00.000Z"
    assert run_start(SourceContext(), stored) == stored
    assert run_start(SourceContext(full=True), stored) is None
    assert run_start(SourceContext(since="2024-01-01"), stored) == "2024-01-01"
    assert last_updated_filter(SourceContext(), stored, 300) == ("gt", "2025-03-01T09:55:00.000Z")
    assert last_updated_filter(SourceContext(), stored, 0) == ("ge", stored)
    assert last_updated_filter(SourceContext(), None, 300) is None
    assert last_updated_filter(SourceContext(full=True), stored, 300) is None
    assert last_updated_filter(SourceContext(since="2024-01-01"), stored, 300) == ("ge", "2024-01-01")


def test_type_watermark_moves_only_over_sorted_stable_pages() -> None:
    mark = TypeWatermark("2025-01-01T00:00:00Z", sorted_pages=True)
    assert mark.see("a", "2025-01-02T00:00:00Z") == ()
    assert mark.after_page == "2025-01-02T00:00:00Z"
    assert mark.see("b", "2025-01-01T12:00:00Z") == ("unsorted",)
    assert mark.see("c", "2025-01-01T13:00:00Z") == ()  # reported once
    assert mark.after_page == "2025-01-01T00:00:00Z"  # back to where the type started
    assert mark.at_end == "2025-01-02T00:00:00Z"  # a complete read may still move it

    shifting = TypeWatermark(None, sorted_pages=True)
    shifting.see("a", "2025-01-02T00:00:00Z")
    assert shifting.see("a", "2025-01-03T00:00:00Z") == ("shifted",)
    assert (shifting.after_page, shifting.at_end) == (None, None)


def test_type_watermark_never_moves_backwards() -> None:
    mark = TypeWatermark("2025-06-01T00:00:00Z", sorted_pages=False)
    mark.see("a", "2025-01-01T00:00:00Z")  # an overlap re-read of an older resource
    assert mark.at_end == "2025-06-01T00:00:00Z"


def test_file_stamps(tmp_path: Path) -> None:
    f = tmp_path / "a.ndjson"
    f.write_text("{}\n")
    stamps = FileStamps(SourceContext())
    stamp = stamps.stamp(f)
    assert not stamps.unchanged(f, stamp)
    stamps.mark_read(f, stamp)
    again = FileStamps(SourceContext(state=copy_state(stamps.state())))
    assert again.unchanged(f, again.stamp(f))
    os.utime(f, ns=(0, 1))  # touched: read again
    assert not again.unchanged(f, again.stamp(f))
    assert not FileStamps(SourceContext(state=stamps.state(), full=True)).unchanged(f, stamp)
    assert stamps.stamp(tmp_path / "gone") is None
