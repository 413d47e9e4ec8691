"""FHIR files: NDJSON (the Bulk Data export layout) and Bundle JSON, streamed.

Files are read a line or a Bundle entry at a time, so memory stays flat however large the
file. A line that is not valid JSON becomes a ``RecordError`` naming file and line, and the
rest of the file is still read. Files are recognised by content, not by extension, because
hospitals send ``.json`` files that are NDJSON and ``.txt`` files that are Bundles. A UTF-8
byte order mark at the start (Windows tools write one) is skipped. Errors give positions and a
generic reason, never the text around the error (``json_limits.describe_json_error``).
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import ijson
import orjson

from adapters.base import Checkpoint, Item, Record, RecordError, SourceContext
from adapters.hl7v2.files import is_gzip
from adapters.hl7v2.records import looks_like_hl7v2
from adapters.incremental import FileStamps
from registry_types.json_limits import (
    TOO_DEEP_CODE,
    UTF8_BOM,
    describe_json_error,
    is_too_deep_error,
)

DEFAULT_MAX_RECORD_BYTES = 16 * 1024 * 1024


def _open(path: Path) -> IO[bytes]:
    # By content, like the formats: a hospital's "export.hl7" may well be gzip-compressed.
    if is_gzip(path):
        return gzip.open(path, "rb")  # type: ignore[return-value]  # GzipFile is a binary IO
    return path.open("rb")


def _looks_like_ndjson(first_lines: list[bytes]) -> bool:
    """NDJSON has a whole JSON object on its first line; a pretty-printed document does not.

    When the first line is broken, the next lines decide: whole resources (objects with a
    ``resourceType``) starting in the first column are NDJSON records, so one broken first
    record does not turn a whole NDJSON file into one malformed document. (A Bundle written an
    entry a line has ``{"resource": ...}`` lines, which are not resources.)
    """
    for number, line in enumerate(first_lines):
        line = line.strip() if number == 0 else line
        if not line.startswith(b"{"):
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            if is_too_deep_error(exc):  # a record too deep to parse is still a line of NDJSON
                return True
            continue
        if number == 0 or (isinstance(obj, dict) and "resourceType" in obj):
            return True
    return False


_SNIFF_LINES = 8


def _record_or_error(obj: Any, origin: str, raw: bytes | None) -> Iterator[Record | RecordError]:
    if not isinstance(obj, dict):
        yield RecordError(origin, "intake.not_a_resource", "expected a JSON object", raw=raw)
        return
    rtype = obj.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        yield RecordError(
            origin,
            "intake.missing_resource_type",
            "resource has no resourceType",
            field="resourceType",
            raw=raw,
        )
        return
    if rtype == "Bundle":
        yield from _bundle_entries(obj.get("entry") or [], origin)
        return
    rid = obj.get("id")
    if not isinstance(rid, str) or not rid:
        yield RecordError(
            origin,
            "intake.missing_id",
            f"{rtype} has no id",
            field=f"{rtype}.id",
            raw=raw,
            resource_type=rtype,
        )
        return
    yield Record(obj, origin, raw)


def _bundle_entries(entries: Iterable[Any], origin: str, start: int = 0) -> Iterator[Record | RecordError]:
    for index, entry in enumerate(entries, start):
        where = f"{origin} entry[{index}]"
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if resource is None:
            # A transaction/batch entry with only a request (e.g. DELETE) carries no resource.
            continue
        if isinstance(resource, dict) and not resource.get("id"):
            # Transaction bundles identify new resources by fullUrl (urn:uuid:...).
            full_url = entry.get("fullUrl")
            if isinstance(full_url, str) and full_url:
                resource = {**resource, "id": full_url.rsplit(":", 1)[-1].rsplit("/", 1)[-1]}
        yield from _record_or_error(resource, where, None)


def read_ndjson(
    stream: IO[bytes],
    name: str,
    *,
    first_line_no: int = 1,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> Iterator[Record | RecordError]:
    line_no = first_line_no - 1
    while True:
        line = stream.readline(max_record_bytes + 1)
        if not line:
            return
        line_no += 1
        origin = f"{name}:{line_no}"
        if len(line) > max_record_bytes and not line.endswith(b"\n"):
            digest = hashlib.sha256(line[:4096])
            while chunk := stream.readline(1 << 20):  # skip the rest of the oversized line
                digest.update(chunk[:4096])
                if chunk.endswith(b"\n"):
                    break
            yield RecordError(
                origin,
                "intake.record_too_large",
                f"{name} line {line_no} is longer than {max_record_bytes} bytes; skipped",
                raw=digest.hexdigest().encode(),
            )
            continue
        body = line.strip()
        if not body:
            continue
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            yield RecordError(
                origin,
                TOO_DEEP_CODE if is_too_deep_error(exc) else "intake.malformed_json",
                f"{name} line {line_no} {describe_json_error(exc, body)}",
                raw=body,
            )
            continue
        yield from _record_or_error(obj, origin, body)


def _is_binary(head: bytes) -> bool:
    """Not UTF-8 text: a NUL byte, or bytes that are not UTF-8 (an image or a zip sent by
    mistake; FHIR JSON is UTF-8 by definition). A character cut at the end of ``head`` does
    not count."""
    if b"\0" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start < len(head) - 3
    return False


def read_document(stream: IO[bytes], name: str, start: int = 0) -> Iterator[Record | RecordError]:
    """A pretty-printed JSON document: a Bundle (entries streamed) or one resource.

    ``start``: where the JSON begins (after a byte order mark)."""
    entries = 0
    try:
        for index, entry in enumerate(ijson.items(stream, "entry.item", use_float=True)):
            entries += 1
            yield from _bundle_entries([entry], name, index)
    except ijson.JSONError:
        # ijson's message quotes the text around the error: say where instead.
        yield RecordError(name, "intake.malformed_json", _document_error(stream, name, start, entries))
        return
    if entries:
        return
    stream.seek(start)
    data = stream.read(DEFAULT_MAX_RECORD_BYTES + 1)
    if len(data) > DEFAULT_MAX_RECORD_BYTES:
        yield RecordError(name, "intake.record_too_large", "single resource file too large")
        return
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        code = TOO_DEEP_CODE if is_too_deep_error(exc) else "intake.malformed_json"
        yield RecordError(name, code, f"{name} {describe_json_error(exc, data)}", raw=data)
        return
    if isinstance(obj, dict) and obj.get("resourceType") == "Bundle":
        return  # an empty Bundle
    yield from _record_or_error(obj, name, data)


def _document_error(stream: IO[bytes], name: str, start: int, entries: int) -> str:
    """Where a document that ijson gave up on is broken, from orjson's position (documents up
    to the record size limit; larger ones say how many entries were read before)."""
    stream.seek(start)
    data = stream.read(DEFAULT_MAX_RECORD_BYTES + 1)
    if len(data) <= DEFAULT_MAX_RECORD_BYTES:
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            return f"{name} {describe_json_error(exc, data)}; {entries} entries read before it"
    return f"{name} is not valid JSON after {entries} entries"


def read_file(path: Path, *, display_name: str | None = None) -> Iterator[Record | RecordError]:
    """Stream one FHIR or HL7 v2 file (NDJSON, JSON document or v2 messages, recognised by
    content; optionally gzip-compressed)."""
    name = display_name or path.name
    try:
        with _open(path) as stream:
            start = len(UTF8_BOM) if stream.read(len(UTF8_BOM)) == UTF8_BOM else 0
            stream.seek(start)
            first_lines: list[bytes] = []
            while len(first_lines) < _SNIFF_LINES:  # NDJSON may start with blank lines
                line = stream.readline(DEFAULT_MAX_RECORD_BYTES + 1)
                if not line:
                    break
                if line.strip():
                    first_lines.append(line.rstrip(b"\r\n"))
            if not first_lines:
                # Said, not skipped: a file sent empty is usually an export that failed.
                yield RecordError(name, "intake.empty_file", f"{name} is empty; no records in it")
                return
            first = first_lines[0]
            stream.seek(start)
            if looks_like_hl7v2(first):
                # Staff import what hospitals send; v2 files are recognised by content.
                from adapters.hl7v2.records import records_from_file

                yield from records_from_file(path, name)
                return
            # After the v2 check: v2 files may be Latin-1 (MSH-18); FHIR JSON is UTF-8 only.
            # What starts like JSON is read line by line instead, so a bad byte is reported
            # with its line and position.
            if not first.lstrip().startswith((b"{", b"[")) and _is_binary(stream.read(8192)):
                yield RecordError(
                    name,
                    "intake.binary_file",
                    f"{name} is not UTF-8 text (a binary file, or text in another encoding): "
                    "not FHIR JSON/NDJSON or HL7 v2; skipped",
                )
                return
            stream.seek(start)
            if _looks_like_ndjson(first_lines):
                yield from read_ndjson(stream, name)
            else:
                yield from read_document(stream, name, start)
    except (OSError, EOFError) as exc:  # EOFError: a gzip file cut short
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        yield RecordError(name, "intake.unreadable_file", f"cannot read {name}: {reason}")


def iter_paths(paths: Iterable[Path], patterns: Iterable[str] = ("**/*",)) -> Iterator[Path]:
    """Files named directly, and files under folders matching ``patterns``, in stable order."""
    pats = tuple(patterns)
    for path in paths:
        if path.is_dir():
            seen: set[Path] = set()
            for pattern in pats:
                seen.update(p for p in path.glob(pattern) if p.is_file())
            yield from sorted(seen)
        else:
            yield path


class FilesSource:
    """A folder of FHIR files (a Bulk export directory, or files staff drop in).

    State records each file's size and modification time once it has been fully read, so a
    scheduled sync reads only new or changed files; ``--full`` reads everything again (staging
    makes that a no-op for unchanged content).
    """

    def __init__(self, name: str, paths: Iterable[Path], patterns: Iterable[str] = ("**/*",)):
        self.name = name
        self.paths = list(paths)
        self.patterns = tuple(patterns)

    def read(self, ctx: SourceContext) -> Iterator[Item]:
        stamps = FileStamps(ctx)
        for path in iter_paths(self.paths, self.patterns):
            stamp = stamps.stamp(path)
            if stamps.unchanged(path, stamp):
                continue
            yield from read_file(path)
            stamps.mark_read(path, stamp)
            yield Checkpoint(stamps.state(), progress=path.name)
        yield Checkpoint(stamps.state())
