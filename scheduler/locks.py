"""Job locks: a lease row per job in ``job_locks``, so two adapter processes sharing one
database (PostgreSQL, or SQLite on one host) never run the same job at the same time.

Acquiring is one statement, ``INSERT ... ON CONFLICT (name) DO UPDATE ... WHERE the lease
expired or is ours``, followed by reading back the owner: the database serialises the
competing upserts on the row (PostgreSQL row lock, SQLite's single writer), so exactly one
process wins. The holder renews the lease while it works; a process that dies simply lets
it lapse after ``ttl`` seconds, after which another process may take over. (A session-level
``pg_advisory_lock`` would free faster on a crash but is PostgreSQL-only and tied to one
pooled connection; the lease works on both databases and shows who holds what.)
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import structlog
from sqlalchemy import Engine, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from registry_store.db import is_postgres
from registry_store.models import JobLock
from scheduler.clock import Clock, SystemClock

log = structlog.get_logger(__name__)
LOCKS = JobLock.__table__  # type: ignore[attr-defined]


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseLock:
    def __init__(
        self,
        engine: Engine,
        name: str,
        ttl_seconds: float,
        clock: Clock | None = None,
        owner: str | None = None,
    ) -> None:
        self.engine = engine
        self.name = name
        self.ttl = timedelta(seconds=ttl_seconds)
        self.clock = clock or SystemClock()
        self.owner = owner or default_owner()

    def acquire(self) -> bool:
        now = self.clock.now()
        dialect = postgresql if is_postgres(self.engine) else sqlite
        stmt = dialect.insert(LOCKS).values(
            name=self.name, owner=self.owner, acquired_at=now, expires_at=now + self.ttl
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={
                "owner": stmt.excluded.owner,
                "acquired_at": stmt.excluded.acquired_at,
                "expires_at": stmt.excluded.expires_at,
            },
            where=or_(LOCKS.c.expires_at < now, LOCKS.c.owner == self.owner),
        )
        with self.engine.begin() as conn:
            conn.execute(stmt)
            holder = conn.execute(select(LOCKS.c.owner).where(LOCKS.c.name == self.name)).scalar_one()
        return bool(holder == self.owner)

    def renew(self) -> bool:
        """Extend the lease; False if it was lost (expired and taken by another process)."""
        with self.engine.begin() as conn:
            n = conn.execute(
                update(LOCKS)
                .where(LOCKS.c.name == self.name, LOCKS.c.owner == self.owner)
                .values(expires_at=self.clock.now() + self.ttl)
            ).rowcount
        if n != 1:
            log.error("lock.lost", lock=self.name)
        return n == 1

    def release(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(LOCKS).where(LOCKS.c.name == self.name, LOCKS.c.owner == self.owner))


@contextmanager
def job_lock(
    engine: Engine, name: str, ttl_seconds: float, clock: Clock | None = None, *, heartbeat: bool = False
) -> Iterator[LeaseLock | None]:
    """Hold the lease for the block; yields None (and runs nothing) when another holder has it.

    ``heartbeat`` renews the lease from a background thread every ttl/3 seconds, for jobs
    (the nightly sync) whose loop cannot call ``renew`` itself.
    """
    lock = LeaseLock(engine, name, ttl_seconds, clock)
    if not lock.acquire():
        yield None
        return
    stop = threading.Event()
    beat: threading.Thread | None = None
    if heartbeat:

        def renew_loop() -> None:
            while not stop.wait(max(1.0, ttl_seconds / 3)):
                lock.renew()

        beat = threading.Thread(target=renew_loop, name=f"lock-{name}", daemon=True)
        beat.start()
    try:
        yield lock
    finally:
        stop.set()
        if beat is not None:
            beat.join()
        lock.release()
