"""Leases (job and sync locks): a row per lease in ``job_locks``, so two adapter processes sharing one
database (PostgreSQL, or SQLite on one host) never run the same job at the same time.

Acquiring is one statement, ``INSERT ... ON CONFLICT (name) DO UPDATE ... WHERE the lease
may be taken``, followed by reading back the owner: the database serialises the competing
upserts on the row (PostgreSQL row lock, SQLite's single writer), so exactly one process wins.
(A session-level ``pg_advisory_lock`` would free faster on a crash but is PostgreSQL-only and
tied to one pooled connection; the lease works on both databases and shows who holds what.)

Each lease names its holder (host, pid) and carries a heartbeat: the holder renews it every
ttl/3 seconds from a background thread. A lease may be taken over at once when its holder
is gone:

- dead: the holder ran on this host (host name and PID namespace) and its process no
  longer exists (``kill -9``, OOM killer), or it carries this process's pid but was taken
  by an earlier process that had the same pid (containers restart as pid 1);
- stale: no heartbeat for ``ttl`` seconds (a holder on another host that died or hangs).

A live holder on another host is only ever judged by its heartbeat, since its pid means
nothing here.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Engine, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from registry_store.db import is_postgres
from registry_store.tables import JOB_LOCKS
from registry_store.timeutil import as_utc
from registry_types.clock import Clock, SystemClock

log = structlog.get_logger(__name__)


def _host_identity() -> str:
    """This host as leases record it: the host name, plus the PID namespace on Linux, so two
    containers sharing a host name (host networking) never judge each other's pids."""
    try:
        return f"{socket.gethostname()}#pidns:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return socket.gethostname()


HOST = _host_identity()
# Owner tokens used by this process: a lease with our host and pid but another token was
# left by an earlier process that had the same pid.
_OUR_OWNERS: set[str] = set()


SYNC_LOCK_PREFIX = "sync:"


def sync_lock_name(source: str) -> str:
    """The lease that keeps two processes from syncing ``source`` at once."""
    return f"{SYNC_LOCK_PREFIX}{source}"


WORKER_LOCK_PREFIX = "worker:"


def worker_lock_name() -> str:
    """A lease of its own for one ``registry-adapter worker`` process while it runs (its host
    and pid are in the row), so workers can tell whether others are still running."""
    return f"{WORKER_LOCK_PREFIX}{uuid.uuid4().hex}"


def others_alive(engine: Engine, prefix: str, *, besides: str | None = None) -> bool:
    """Whether any lease named ``prefix``… (other than ``besides``) is held by a live holder
    (dead or stale ones, left by a killed process, do not count)."""
    now = datetime.now(UTC)
    return any(
        h.name.startswith(prefix) and h.name != besides and h.gone(now) is None for h in holders(engine)
    )


def default_owner() -> str:
    owner = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    _OUR_OWNERS.add(owner)
    return owner


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a zombie still counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as stored in its row."""

    name: str
    owner: str
    host: str | None
    pid: int | None
    acquired_at: datetime
    heartbeat_at: datetime | None
    expires_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> Holder:
        return cls(
            name=row.name,
            owner=row.owner,
            host=row.host,
            pid=row.pid,
            acquired_at=as_utc(row.acquired_at) or row.acquired_at,
            heartbeat_at=as_utc(row.heartbeat_at),
            expires_at=as_utc(row.expires_at) or row.expires_at,
        )

    def gone(self, now: datetime) -> str | None:
        """``dead``, ``stale`` or None (the holder is alive as far as we can tell)."""
        if self.host == HOST and self.pid is not None:
            if self.pid == os.getpid():
                if self.owner not in _OUR_OWNERS:
                    return "dead"
            elif not process_alive(self.pid):
                return "dead"
        if self.expires_at < now:
            return "stale"
        return None

    def describe(self) -> str:
        """The holder and when its lease expires, for messages (no patient data here)."""
        who = f"pid {self.pid} on host {self.host}" if self.pid is not None else f"holder {self.owner}"
        return f"{who}, lease expires {self.expires_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"

    def as_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "pid": self.pid,
            "owner": self.owner,
            "acquired_at": self.acquired_at.isoformat(),
            "heartbeat_at": self.heartbeat_at.isoformat() if self.heartbeat_at else None,
            "expires_at": self.expires_at.isoformat(),
            "state": self.gone(now) or "alive",
        }


def holders(engine: Engine, name: str | None = None) -> list[Holder]:
    """Every lease (or the one called ``name``), by name."""
    query = select(JOB_LOCKS).order_by(JOB_LOCKS.c.name)
    if name is not None:
        query = query.where(JOB_LOCKS.c.name == name)
    with engine.connect() as conn:
        return [Holder.from_row(r) for r in conn.execute(query)]


def release_holder(engine: Engine, holder: Holder) -> bool:
    """Delete this holder's lease (only if it still holds it); True if it did."""
    with engine.begin() as conn:
        n = conn.execute(
            delete(JOB_LOCKS).where(JOB_LOCKS.c.name == holder.name, JOB_LOCKS.c.owner == holder.owner)
        ).rowcount
    return bool(n == 1)


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
        _OUR_OWNERS.add(self.owner)
        # The holder we took the lease over from (it had died or stopped renewing), if any.
        self.took_over: Holder | None = None

    def acquire(self) -> bool:
        now = self.clock.now()
        found = holders(self.engine, self.name)
        current = found[0] if found else None
        may_take = [JOB_LOCKS.c.expires_at < now, JOB_LOCKS.c.owner == self.owner]
        if current is not None and current.owner != self.owner and current.gone(now) == "dead":
            # Only that dead holder's row: if someone else took it meanwhile, we lose.
            may_take.append(JOB_LOCKS.c.owner == current.owner)
        dialect = postgresql if is_postgres(self.engine) else sqlite
        stmt = dialect.insert(JOB_LOCKS).values(
            name=self.name,
            owner=self.owner,
            acquired_at=now,
            expires_at=now + self.ttl,
            host=HOST,
            pid=os.getpid(),
            heartbeat_at=now,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={
                k: getattr(stmt.excluded, k)
                for k in ("owner", "acquired_at", "expires_at", "host", "pid", "heartbeat_at")
            },
            where=or_(*may_take),
        )
        with self.engine.begin() as conn:
            conn.execute(stmt)
            owner = conn.execute(select(JOB_LOCKS.c.owner).where(JOB_LOCKS.c.name == self.name)).scalar_one()
        won = bool(owner == self.owner)
        if won and current is not None and current.owner != self.owner:
            self.took_over = current
            log.warning(
                "lock.taken_over",
                lock=self.name,
                previous_host=current.host,
                previous_pid=current.pid,
                reason=current.gone(now) or "expired",
            )
        return won

    def renew(self) -> bool:
        """Heartbeat: extend the lease; False if it was lost (taken over by another process)."""
        now = self.clock.now()
        with self.engine.begin() as conn:
            n = conn.execute(
                update(JOB_LOCKS)
                .where(JOB_LOCKS.c.name == self.name, JOB_LOCKS.c.owner == self.owner)
                .values(expires_at=now + self.ttl, heartbeat_at=now)
            ).rowcount
        if n != 1:
            log.error("lock.lost", lock=self.name)
        return n == 1

    def release(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                delete(JOB_LOCKS).where(JOB_LOCKS.c.name == self.name, JOB_LOCKS.c.owner == self.owner)
            )


@contextmanager
def job_lock(
    engine: Engine, name: str, ttl_seconds: float, clock: Clock | None = None, *, heartbeat: bool = True
) -> Iterator[LeaseLock | None]:
    """Hold the lease for the block; yields None (and runs nothing) when another holder has it.

    A background thread renews the lease (the heartbeat) every ttl/3 seconds while the block
    runs (``heartbeat=False``: only the job's own ``renew`` calls do); a job may also call
    ``renew`` itself to learn whether it still holds the lease.
    """
    lock = LeaseLock(engine, name, ttl_seconds, clock)
    if not lock.acquire():
        yield None
        return
    stop = threading.Event()

    def renew_loop() -> None:
        while not stop.wait(max(1.0, ttl_seconds / 3)):
            try:
                if not lock.renew():
                    return
            except Exception as exc:  # database busy or gone for a moment: beat again next time
                log.warning("lock.heartbeat_failed", lock=name, error=type(exc).__name__)

    beat = threading.Thread(target=renew_loop, name=f"lock-{name}", daemon=True)
    if heartbeat:
        beat.start()
    try:
        yield lock
    finally:
        stop.set()
        if heartbeat:
            beat.join()
        lock.release()
