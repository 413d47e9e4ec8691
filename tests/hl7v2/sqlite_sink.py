"""A minimal MessageSink on a SQLite file (WAL, synchronous=FULL) for the listener's own tests.

The production sink is ``registry_store.hl7_sink.StagingSink`` (tested with the listener in
test_mllp_staging.py and used by the benchmark); this one keeps the ``MessageSink`` contract
simple enough to read in a test: one
transaction per batch, dedup on (sending facility, control id) for accepted messages,
header-rejected messages kept with their reason.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from adapters.hl7v2.mllp import InboundMessage, StoreOutcome, StoreStatus

SCHEMA = """
CREATE TABLE IF NOT EXISTS hl7_inbound (
    seq INTEGER PRIMARY KEY,
    sending_facility TEXT,
    control_id TEXT,
    message_type TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    origin TEXT NOT NULL,
    received_at TEXT NOT NULL,
    raw BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS hl7_inbound_dedup
    ON hl7_inbound (sending_facility, control_id) WHERE status = 'stored';
"""


class SQLiteSink:
    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()  # store() is single-threaded by contract; reads are not
        self.calls = 0
        self.batch_sizes: list[int] = []

    def store(self, messages: Sequence[InboundMessage]) -> Sequence[StoreOutcome]:
        outcomes: list[StoreOutcome] = []
        with self._lock:
            self.calls += 1
            self.batch_sizes.append(len(messages))
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for m in messages:
                    h = m.header
                    status = "rejected" if m.header_error else "stored"
                    cur.execute(
                        "INSERT OR IGNORE INTO hl7_inbound (sending_facility, control_id, "
                        "message_type, status, reason, origin, received_at, raw) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            h.sending_facility if h else None,
                            h.control_id if h else None,
                            h.message_type if h else None,
                            status,
                            m.header_error.code if m.header_error else None,
                            m.origin,
                            m.received_at.isoformat(),
                            m.raw,
                        ),
                    )
                    if m.header_error:
                        outcomes.append(StoreOutcome(StoreStatus.REJECTED, m.header_error.code))
                    elif cur.rowcount == 0:
                        outcomes.append(StoreOutcome(StoreStatus.DUPLICATE))
                    else:
                        outcomes.append(StoreOutcome(StoreStatus.STORED))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return outcomes

    def rows(self) -> list[tuple[str | None, str | None, str, str | None, bytes]]:
        with self._lock:
            return list(
                self._db.execute(
                    "SELECT sending_facility, control_id, status, reason, raw "
                    "FROM hl7_inbound ORDER BY seq"
                )
            )

    def close(self) -> None:
        self._db.close()
