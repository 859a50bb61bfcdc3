"""One scheduler for every deadline and wake-up the operator must act on.

One task and a heap for thousands of runs, not a timer per run. The heap is
only a cache of *when to look again*: each entry names a key (a run's
``RunKey``, a worker Lease's ``LeaseKey`` for when it expires, or a finished
run's ``ExpiryKey`` for when its TTL runs out), and firing
it calls the ``Controller``, which decides afresh from the run's latest
snapshot (what the informers last reported), so a stale entry costs a lookup
and nothing else. A key holds one plan at a time: ``schedule`` replaces it (or
forgets it, with None), and an entry pushed for an older plan is skipped when
it comes up. Firing is synchronous and never waits for the network: a
decision that needs a write is offered to the write backlog (``writing.py``),
so a thousand deadlines due at once cost a thousand offers, not a thousand
tasks. Nothing is stored: after a (re)start the informers list every run, and
deciding each schedules it again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import logging
from collections.abc import Callable, Hashable

from kubestep import _protocol as api

logger = logging.getLogger("kubestep.operator")


class Scheduler:
    def __init__(self, fire: Callable[[Hashable], None]) -> None:
        self._fire = fire
        self._heap: list[tuple[dt.datetime, int, Hashable]] = []
        self._due: dict[Hashable, dt.datetime] = {}
        self._seq = 0  # tie-breaker: keys need not be comparable
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._due)

    def due(self, key: Hashable) -> dt.datetime | None:
        return self._due.get(key)

    def schedule(self, key: Hashable, when: dt.datetime | None) -> None:
        """Look at ``key`` again at ``when`` (replacing an earlier plan); None forgets it."""
        if when is None:
            self._due.pop(key, None)
            return
        if self._due.get(key) == when:
            return
        self._due[key] = when
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, key))
        if self._heap[0][2] == key:
            self._changed.set()

    async def run(self) -> None:
        while True:
            now, fired = api.now(), 0
            while self._heap and self._heap[0][0] <= now:
                when, _, key = heapq.heappop(self._heap)
                if self._due.get(key) != when:
                    continue  # replaced or forgotten since it was pushed
                del self._due[key]
                try:
                    self._fire(key)
                except Exception:
                    logger.exception("scheduled check of %s failed; retrying in 1 s", key)
                    self.schedule(key, now + dt.timedelta(seconds=1))
                fired += 1
                if fired % 256 == 0:
                    await asyncio.sleep(0)  # thousands due at once: let the watches and writers in
            self._changed.clear()
            timeout = (self._heap[0][0] - now).total_seconds() if self._heap else None
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                pass
