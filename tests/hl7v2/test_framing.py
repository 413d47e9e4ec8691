"""MLLPFramer on split, joined, hostile input."""

from __future__ import annotations

from adapters.hl7v2.framing import Discarded, Frame, MLLPFramer, Oversize, Truncated, frame


def _feed_all(framer: MLLPFramer, chunks: list[bytes]) -> list[object]:
    out: list[object] = []
    for c in chunks:
        out += framer.feed(c)
    return out


def test_byte_by_byte_and_joined() -> None:
    data = frame(b"MSH|a") + frame(b"MSH|b") + frame(b"MSH|c")
    events = _feed_all(MLLPFramer(), [data[i : i + 1] for i in range(len(data))])
    assert events == [Frame(b"MSH|a"), Frame(b"MSH|b"), Frame(b"MSH|c")]
    assert MLLPFramer().feed(data) == events


def test_fs_cr_split_across_reads() -> None:
    f = MLLPFramer()
    assert f.feed(b"\x0bMSH|x\x1c") == []
    assert f.feed(b"\r") == [Frame(b"MSH|x")]


def test_garbage_and_restart() -> None:
    f = MLLPFramer()
    events = f.feed(b"junk\x0bMSH|lost\x0bMSH|ok\x1c\r")
    assert events == [Discarded(4, False), Truncated(8, b"MSH|lost"), Frame(b"MSH|ok")]


def test_oversize_stops_buffering() -> None:
    f = MLLPFramer(max_message_bytes=100)
    events = f.feed(b"\x0bMSH|" + b"x" * 200)
    assert len(events) == 1 and isinstance(events[0], Oversize)
    assert f.pending_bytes == 0 and f.overflowed
    assert f.feed(b"more") == [Discarded(4)]


def test_large_frame_scanned_incrementally() -> None:
    body = b"x" * 65536
    g = MLLPFramer()  # 10 MiB in 64 KiB reads: each read scans only the new bytes
    assert g.feed(b"\x0bMSH|") == []
    for _ in range(160):
        assert g.feed(body) == []
    assert g.feed(b"\x1c\r") == [Frame(b"MSH|" + body * 160)]


def test_close_reports_open_frame() -> None:
    f = MLLPFramer()
    f.feed(b"\x0bMSH|half")
    assert f.close() == [Truncated(8, b"MSH|half")]
