"""The operator's write path: pending decisions in one backlog, drained by a fixed number of writers.

Why not write where the event is handled, as the operator once did in kopf's per-object handlers: kopf
ran a handler per object concurrently, so an operator started on a backlog of 2,000 unqueued runs had 2,000 writes (and as many
Events) waiting for a pool of 24 connections. httpcore scans every waiting request on every pool event
(quadratic in the queue), the waits ran into the pool timeout, each failure was retried a second later
into the same pool, and nothing was ever written (issue 12).

So handling an event never waits for the network. The controller decides (``reconciling.decide`` is pure and cheap) and, when
there is something to write, *offers the run's key* to the ``Backlog``:

* Each key is held once, at the most urgent level it was offered with. A newer event for a pending run
  costs nothing: the writer re-reads the run's latest snapshot and decides again when it takes the key, so
  a decision superseded meanwhile is never made (the same "queue keys, not events" shape as client-go's
  workqueue).
* Writers take keys most urgent first: a cancel or an expired budget overtakes any number of queued
  admissions, which is what this product exists for.
* A key being written is not handed to a second writer; an offer made meanwhile is kept and honoured when
  the write is done, so the newer state is always decided on.
* The number of writers is fixed and the connection pool is sized to match, so no write ever waits for a
  connection, and the wait in the backlog has no timeout.
* A write that lost a race (409, a failed ``test``: ``kubestep._errors.lost_race``) is dropped: the change
  that beat it arrives as the next event. Any other failure, a write the apiserver refused as invalid
  included, is retried after an exponential backoff with jitter (``retry_delay``) by the operator's
  scheduler, outside the backlog, so retries never crowd the queue they wait on.
"""

from __future__ import annotations

import asyncio
import heapq
import random
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Backlog(Generic[K]):
    """Keys waiting for a writer: each at most once, most urgent (lowest ``urgency``) first, first come
    first served within a level. Not thread-safe; one event loop."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, K]] = []
        self._pending: dict[K, tuple[int, int]] = {}  # key -> its live heap entry
        self._busy: set[K] = set()  # handed to a writer, not yet done
        self._again: dict[K, int] = {}  # offered while busy
        self._waiters: list[asyncio.Future[None]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._pending) + len(self._again)

    def count(self, urgency: int) -> int:
        return sum(1 for u, _ in self._pending.values() if u == urgency) + sum(
            1 for u in self._again.values() if u == urgency
        )

    @property
    def busy(self) -> int:
        return len(self._busy)

    def offer(self, key: K, urgency: int) -> None:
        """Asks for ``key`` to be decided and written; a repeat offer only raises its urgency."""
        if key in self._busy:
            self._again[key] = min(urgency, self._again.get(key, urgency))
            return
        current = self._pending.get(key)
        if current is not None and current[0] <= urgency:
            return
        self._seq += 1
        self._pending[key] = (urgency, self._seq)
        heapq.heappush(self._heap, (urgency, self._seq, key))  # an older, less urgent entry goes stale
        self._wake_one()

    def discard(self, key: K) -> None:
        """Forgets a pending offer (the run finished or was deleted); a write in flight is not stopped."""
        self._pending.pop(key, None)
        self._again.pop(key, None)

    async def take(self) -> K:
        """The most urgent pending key, now marked busy until ``done(key)``."""
        while True:
            while self._heap:
                urgency, seq, key = heapq.heappop(self._heap)
                if self._pending.get(key) != (urgency, seq):
                    continue  # raised or discarded since it was pushed
                del self._pending[key]
                self._busy.add(key)
                return key
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def done(self, key: K) -> None:
        """The writer is finished with ``key``; an offer made meanwhile is queued now."""
        self._busy.discard(key)
        again = self._again.pop(key, None)
        if again is not None:
            self.offer(key, again)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return


def retry_delay(failures: int, rng: random.Random | None = None, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds to wait before retrying a write that failed ``failures`` times in a row: exponential
    backoff with "equal jitter" (half fixed, half random), so retries of many runs that failed together
    spread out instead of arriving together."""
    ceiling = min(cap, base * float(2 ** max(0, failures - 1)))
    jitter: float = (rng or random).uniform(0, ceiling / 2)
    return ceiling / 2 + jitter
