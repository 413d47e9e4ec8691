"""MLLP framing (VT payload FS CR) for streams and files.

A TCP read may hold half a frame, several frames, or bytes between frames; ``MLLPFramer``
is fed whatever arrives and returns events: complete frames, discarded bytes, a frame cut
short by a new start block, or a frame over the size limit (after which the stream cannot be
trusted and the listener closes the connection). It never holds more than the limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

START = b"\x0b"
END = b"\x1c\r"
FS = 0x1C
CR = 0x0D


@dataclass(frozen=True, slots=True)
class Frame:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Discarded:
    """Bytes outside any frame (garbage, keep-alive newlines)."""

    nbytes: int
    whitespace_only: bool = False


@dataclass(frozen=True, slots=True)
class Truncated:
    """A frame that never ended: a new start block came first, or the input ended."""

    nbytes: int
    data: bytes  # the cut frame's bytes (for keeping it, never for logging)


@dataclass(frozen=True, slots=True)
class Oversize:
    """A frame grew past ``max_message_bytes``; ``prefix`` holds its first bytes."""

    nbytes: int
    prefix: bytes


FrameEvent = Frame | Discarded | Truncated | Oversize

_PREFIX = 4096  # enough for any MSH segment


def frame(payload: bytes) -> bytes:
    return START + payload + END


class MLLPFramer:
    """Incremental frame splitter. Not thread-safe; one per connection or file."""

    def __init__(self, max_message_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_message_bytes = max_message_bytes
        self._buf = bytearray()
        self._in_frame = False
        self._scan = 0  # where the search for FS resumes, so a big frame is scanned once
        self.overflowed = False

    def feed(self, data: bytes) -> list[FrameEvent]:
        if self.overflowed:
            return [Discarded(len(data))] if data else []
        self._buf += data
        events: list[FrameEvent] = []
        buf = self._buf
        while buf:
            if not self._in_frame:
                start = buf.find(START)
                if start == -1:
                    events.append(Discarded(len(buf), not bytes(buf).strip(b" \t\r\n")))
                    buf.clear()
                    break
                if start:
                    events.append(Discarded(start, not bytes(buf[:start]).strip(b" \t\r\n")))
                del buf[: start + 1]
                self._in_frame = True
                self._scan = 0
                continue
            end = buf.find(FS, self._scan)
            # Bytes before _scan were already searched for both FS and VT.
            restart = buf.find(START, self._scan, end if end != -1 else len(buf))
            if restart != -1:
                # A new frame began before this one ended: the sender gave up on it.
                events.append(Truncated(restart, bytes(buf[:restart])))
                del buf[:restart]
                self._in_frame = False
                continue
            if end == -1:
                self._scan = len(buf)
                if len(buf) > self.max_message_bytes:
                    events.append(Oversize(len(buf), bytes(buf[:_PREFIX])))
                    buf.clear()
                    self.overflowed = True
                break
            if end > self.max_message_bytes:
                events.append(Oversize(end, bytes(buf[:_PREFIX])))
                buf.clear()
                self.overflowed = True
                break
            if end + 1 == len(buf):
                self._scan = end  # FS is the last byte: wait for the CR
                break
            payload = bytes(buf[:end])
            # FS CR is the standard end; a lone FS is accepted (some senders omit the CR).
            del buf[: end + 2 if buf[end + 1] == CR else end + 1]
            self._in_frame = False
            self._scan = 0
            events.append(Frame(payload))
        return events

    def close(self) -> list[FrameEvent]:
        """End of input: a frame still open is truncated; leftover bytes are discarded."""
        events: list[FrameEvent] = []
        if self._buf:
            if self._in_frame:
                events.append(Truncated(len(self._buf), bytes(self._buf)))
            else:
                events.append(Discarded(len(self._buf), not bytes(self._buf).strip(b" \t\r\n")))
        self._buf.clear()
        self._in_frame = False
        return events

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)


def split_frames(data: bytes, max_message_bytes: int = 16 * 1024 * 1024) -> Iterator[FrameEvent]:
    """All frame events of a complete byte string (a file)."""
    framer = MLLPFramer(max_message_bytes)
    yield from framer.feed(data)
    yield from framer.close()
