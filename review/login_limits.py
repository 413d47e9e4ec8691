"""Sign-in limits per client address, and the bounded pool that verifies passwords.

The account lock (review.auth) alone lets a stranger keep a known account locked: five
wrong guesses every fifteen minutes. Failures are therefore also counted per client address
over a longer window; an address over its budget is refused before any password is checked,
and its attempts no longer count against the account.

argon2 verification is deliberately slow (tens of ms of CPU). Run on the event loop, a flood
of sign-ins would stall every page and ``/healthz``; it runs in a thread pool of its own,
bounded so a flood queues there instead of taking every core and thread.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread
from anyio import CapacityLimiter

T = TypeVar("T")

# Concurrent password verifications per web process (the machine has few cores to spare).
HASH_WORKERS = 2
# Addresses remembered at most; the oldest is forgotten first, so a spray of addresses
# cannot exhaust memory.
MAX_TRACKED = 10_000


class ClientFailures:
    """Failed sign-ins per client address within a sliding window (in memory, per process)."""

    def __init__(self, max_failures: int, window_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.max_failures = max_failures
        self.window = window_seconds
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.get(address)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[address]
        return times

    def blocked(self, address: str) -> bool:
        with self._lock:
            return len(self._recent(address, self.clock())) >= self.max_failures

    def record_failure(self, address: str) -> None:
        with self._lock:
            now = self.clock()
            times = self._recent(address, now)
            times.append(now)
            self._failures[address] = times
            self._failures.move_to_end(address)
            while len(self._failures) > MAX_TRACKED:
                self._failures.popitem(last=False)


class HashPool:
    """Runs password checks in worker threads, at most ``HASH_WORKERS`` at a time."""

    def __init__(self, workers: int = HASH_WORKERS):
        self.workers = workers
        self._limiter: CapacityLimiter | None = None

    async def run(self, func: Callable[[], T]) -> T:
        if self._limiter is None:  # created on the event loop that uses it
            self._limiter = CapacityLimiter(self.workers)
        return await anyio.to_thread.run_sync(func, limiter=self._limiter)
