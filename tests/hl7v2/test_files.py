"""File-drop reading: framing detection, line endings, origins, leftovers reported."""

from __future__ import annotations

from pathlib import Path

from adapters.hl7v2.files import FileMessage, FileMessageError, iter_messages
from adapters.hl7v2.framing import frame
from tests.hl7v2.conftest import make_message

A = make_message("F1")
B = make_message("F2")


def _items(tmp_path: Path, data: bytes) -> list[FileMessage | FileMessageError]:
    p = tmp_path / "drop.hl7"
    p.write_bytes(data)
    return list(iter_messages(p))


def test_plain_file_with_each_line_ending(tmp_path: Path) -> None:
    for ending in (b"\r", b"\n", b"\r\n"):
        data = (A + B).replace(b"\r", ending)
        items = _items(tmp_path, data)
        assert [i.origin for i in items] == ["drop.hl7#1", "drop.hl7#2"]
        assert all(isinstance(i, FileMessage) and not i.framed for i in items)
        assert [i.raw.split(ending)[0][-30:] for i in items] == [
            x.split(b"\r")[0][-30:] for x in (A, B)]


def test_bom_and_blank_lines(tmp_path: Path) -> None:
    items = _items(tmp_path, b"\xef\xbb\xbf\n\n" + A.replace(b"\r", b"\n") + b"\n\n")
    assert len(items) == 1 and isinstance(items[0], FileMessage)


def test_framed_file_with_garbage_and_truncated_end(tmp_path: Path) -> None:
    data = frame(A) + b"\r\n" + b"garbage!" + frame(B) + b"\x0bMSH|^~\\&|cut"
    items = _items(tmp_path, data)
    kinds = [(type(i).__name__, getattr(i, "code", None)) for i in items]
    assert kinds == [("FileMessage", None), ("FileMessageError", "hl7.garbage"),
                     ("FileMessage", None), ("FileMessageError", "hl7.truncated_frame")]
    assert items[0].raw == A and items[2].raw == B
    assert items[3].raw.startswith(b"MSH|")  # the cut bytes are kept, not dropped


def test_text_before_first_msh_is_reported(tmp_path: Path) -> None:
    items = _items(tmp_path, b"PID|1||x\r" + A)
    assert isinstance(items[0], FileMessageError) and items[0].code == "hl7.no_msh"
    assert "PID" in items[0].message
    assert isinstance(items[1], FileMessage)


def test_empty_and_too_large(tmp_path: Path) -> None:
    assert [getattr(i, "code", None) for i in _items(tmp_path, b"")] == ["hl7.empty"]
    p = tmp_path / "big.hl7"
    p.write_bytes(A * 10)
    (item,) = list(iter_messages(p, max_file_bytes=100))
    assert isinstance(item, FileMessageError) and item.code == "hl7.file_too_large"


def test_gzipped_file_is_read_decompressed_whatever_its_name(tmp_path: Path) -> None:
    import gzip

    for name in ("batch.hl7.gz", "batch.hl7"):
        p = tmp_path / name
        p.write_bytes(gzip.compress(frame(A) + frame(B)))
        items = list(iter_messages(p))
        assert [i.raw for i in items if isinstance(i, FileMessage)] == [A, B]
        assert not [i for i in items if isinstance(i, FileMessageError)]


def test_gzip_bomb_and_corrupt_gzip_are_errors_not_crashes(tmp_path: Path) -> None:
    import gzip

    bomb = tmp_path / "bomb.hl7.gz"
    bomb.write_bytes(gzip.compress(A + b"x" * 2_000_000))
    (err,) = list(iter_messages(bomb, max_file_bytes=1_000_000))
    assert isinstance(err, FileMessageError) and err.code == "hl7.file_too_large"
    assert "decompressed" in err.message
    cut = tmp_path / "cut.hl7.gz"
    cut.write_bytes(gzip.compress(A * 50)[:60])
    (err,) = list(iter_messages(cut))
    assert isinstance(err, FileMessageError) and err.code == "hl7.bad_gzip"
