"""A drop folder of HL7 v2 message files (what interface engines write when MLLP is not used).

Each file's messages are staged raw; once they are committed, the file moves to the archive
folder, or to quarantine with an ``.errors.txt`` beside it when any message was unusable
(the usable ones are staged all the same, and the bad ones are kept as invalid records).
A file still being written is left for the next run: it must be unchanged for
``settle_seconds``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from adapters.base import Checkpoint, Item, RecordError, SourceContext
from adapters.hl7v2.records import records_from_file


class Hl7DropFolder:
    def __init__(
        self,
        name: str,
        path: Path,
        *,
        archive: Path | None = None,
        quarantine: Path | None = None,
        patterns: tuple[str, ...] = ("*.hl7",),
        settle_seconds: float = 2.0,
    ):
        self.name = name
        self.path = path
        self.archive = archive or path / "archive"
        self.quarantine = quarantine or path / "quarantine"
        self.patterns = patterns
        self.settle_seconds = settle_seconds

    def _ready(self) -> list[Path]:
        found: set[Path] = set()
        for pattern in self.patterns:
            found.update(p for p in self.path.glob(pattern) if p.is_file())
        now = time.time()
        return sorted(p for p in found if now - p.stat().st_mtime >= self.settle_seconds)

    def read(self, ctx: SourceContext) -> Iterator[Item]:
        for path in self._ready():
            errors: list[RecordError] = []
            for item in records_from_file(path):
                if isinstance(item, RecordError):
                    errors.append(item)
                yield item
            # The pipeline commits a checkpoint before asking for the next item, so once
            # this generator resumes the file's messages are durably staged and it can move.
            yield Checkpoint({}, progress=path.name)
            self._move(path, errors)
        yield Checkpoint({})

    def _move(self, path: Path, errors: list[RecordError]) -> None:
        target_dir = self.quarantine if errors else self.archive
        target_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        target = target_dir / f"{stamp}-{path.name}"
        shutil.move(str(path), target)
        if errors:
            lines = [f"{e.origin}\t{e.code}\t{e.field or ''}\t{e.message}" for e in errors]
            target.with_name(target.name + ".errors.txt").write_text(
                "\n".join(lines) + "\n", encoding="utf-8"
            )
