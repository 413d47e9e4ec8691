"""File-drop source: files holding one or many HL7 v2 messages.

A file is MLLP-framed (first byte after optional BOM/whitespace is VT) or plain (messages
start at each segment named MSH; segments end with \\r, \\n or \\r\\n). Each message is yielded
with its file name and 1-based index as origin; anything that is not a message (bytes before
the first MSH, garbage between frames, a frame cut short, an empty file) is yielded as a
``FileMessageError`` carrying those bytes, so nothing in a file is silently dropped.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from adapters.hl7v2.framing import Discarded, Frame, Oversize, Truncated, split_frames
from adapters.hl7v2.mllp import DEFAULT_MAX_MESSAGE_BYTES

DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024

# A message starts where a segment named MSH starts (file start or after a line ending).
_MSH_START = re.compile(rb"(?:^|(?<=[\r\n]))MSH(?=[^\r\n])")
_BOM = b"\xef\xbb\xbf"
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, slots=True)
class FileMessage:
    path: Path
    index: int
    raw: bytes
    framed: bool

    @property
    def origin(self) -> str:
        return f"{self.path.name}#{self.index}"


@dataclass(frozen=True, slots=True)
class FileMessageError:
    path: Path
    index: int
    code: str
    message: str
    raw: bytes = b""

    @property
    def origin(self) -> str:
        return f"{self.path.name}#{self.index}"


FileItem = FileMessage | FileMessageError


def _segment_name(data: bytes) -> str:
    name = data.lstrip(b" \t\r\n")[:3]
    return name.decode("ascii") if name.isalnum() and name.isascii() else "non-text"


def _plain(path: Path, data: bytes) -> Iterator[FileItem]:
    starts = [m.start() for m in _MSH_START.finditer(data)]
    index = 0
    head = data[: starts[0]] if starts else data
    if head.strip():
        index += 1
        yield FileMessageError(
            path, index, "hl7.no_msh",
            f"{len(head)} bytes before the first MSH segment (first segment: "
            f"{_segment_name(head)})" if starts else
            f"no MSH segment in the file ({len(head)} bytes; first segment: "
            f"{_segment_name(head)})",
            head,
        )
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(data)
        index += 1
        yield FileMessage(path, index, data[start:end].rstrip(b"\r\n \t"), framed=False)


def _framed(path: Path, data: bytes, max_message_bytes: int) -> Iterator[FileItem]:
    index = 0
    for event in split_frames(data, max_message_bytes):
        if isinstance(event, Frame):
            index += 1
            yield FileMessage(path, index, event.payload, framed=True)
        elif isinstance(event, Discarded):
            if not event.whitespace_only:
                index += 1
                yield FileMessageError(path, index, "hl7.garbage",
                                       f"{event.nbytes} bytes outside MLLP frames")
        elif isinstance(event, Truncated):
            index += 1
            yield FileMessageError(path, index, "hl7.truncated_frame",
                                   f"MLLP frame of {event.nbytes} bytes has no end block "
                                   "(file cut short?)", event.data)
        elif isinstance(event, Oversize):
            index += 1
            yield FileMessageError(path, index, "hl7.oversize",
                                   f"MLLP frame exceeds the {max_message_bytes}-byte limit",
                                   event.prefix)
            return


def is_gzip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _read_bounded(path: Path, limit: int) -> bytes | None:
    """The file's bytes (decompressed if gzip), or None when they exceed ``limit``."""
    if not is_gzip(path):
        return None if path.stat().st_size > limit else path.read_bytes()
    with gzip.open(path, "rb") as fh:
        data = fh.read(limit + 1)  # bounded: a small .gz may inflate to gigabytes
    return None if len(data) > limit else data


def iter_messages(
    path: Path,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> Iterator[FileMessage | FileMessageError]:
    """Messages of one file, in order. Never raises for bad content (only for I/O errors).

    A gzip-compressed file (recognised by its magic bytes, whatever its name) is read
    decompressed; the size limit applies to the decompressed bytes.
    """
    try:
        data = _read_bounded(path, max_file_bytes)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        # The file is quarantined with this error rather than failing the whole sync.
        yield FileMessageError(path, 1, "hl7.bad_gzip",
                               f"file starts like gzip but cannot be decompressed "
                               f"({type(exc).__name__})")
        return
    if data is None:
        yield FileMessageError(path, 1, "hl7.file_too_large",
                               f"file is over the {max_file_bytes}-byte limit"
                               f"{' once decompressed' if is_gzip(path) else ''}")
        return
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    if not data.strip(b" \t\r\n"):
        yield FileMessageError(path, 1, "hl7.empty", "file is empty", data)
        return
    if data.lstrip(b" \t\r\n")[:1] == b"\x0b":
        yield from _framed(path, data, max_message_bytes)
    else:
        yield from _plain(path, data)
