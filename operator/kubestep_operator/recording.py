"""Events the operator posts, sent by a fixed number of senders from a bounded queue.

Events are what ``kubectl describe`` shows, but never what a run's correctness rests on, so they must not
compete with status writes for connections: a drain of thousands of admissions posts thousands of Events.
Like client-go's event broadcaster (1,000 queued events, then drop), the queue is bounded and an Event
that does not fit is dropped and counted (``kubestep_operator_events_dropped_total``), never waited for.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

from kubestep._kube import Kube

from . import measuring

logger = logging.getLogger("kubestep.operator")

QUEUE_LIMIT = 1000


class Recorder:
    def __init__(self, kube: Kube, component: str, limit: int = QUEUE_LIMIT) -> None:
        self._kube = kube
        self._component = component
        self._queue: collections.deque[tuple[dict[str, Any], str, str, str]] = collections.deque()
        self._limit = limit
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._queue)

    def post(self, ref: dict[str, Any], type_: str, reason: str, message: str) -> None:
        if len(self._queue) >= self._limit:
            measuring.EVENTS_DROPPED.inc()
            return
        self._queue.append((ref, type_, reason, message))
        self._ready.set()

    async def send(self) -> None:
        """One sender: posts queued Events one at a time until cancelled."""
        while True:
            while not self._queue:
                self._ready.clear()
                await self._ready.wait()
            ref, type_, reason, message = self._queue.popleft()
            # post_event logs and swallows API errors itself: an Event is never retried.
            await self._kube.post_event(ref, type_=type_, reason=reason, message=message, component=self._component)
