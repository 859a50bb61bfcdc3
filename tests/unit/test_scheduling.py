"""The operator's single scheduler: ordering, replacement, forgetting."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Hashable

from kubestep import _protocol as api
from kubestep_operator.scheduling import Scheduler


async def test_fires_in_due_order_and_honours_replacement_and_forgetting() -> None:
    fired: list[Hashable] = []
    done = asyncio.Event()

    def fire(key: Hashable) -> None:
        fired.append(key)
        if len(fired) == 2:
            done.set()

    s = Scheduler(fire)
    task = asyncio.create_task(s.run())
    now = api.now()
    s.schedule("late", now + dt.timedelta(milliseconds=80))
    s.schedule("early", now + dt.timedelta(milliseconds=20))
    s.schedule("forgotten", now + dt.timedelta(milliseconds=10))
    s.schedule("forgotten", None)
    s.schedule("moved", now + dt.timedelta(milliseconds=5))
    s.schedule("moved", now + dt.timedelta(seconds=60))
    await asyncio.wait_for(done.wait(), 5)
    task.cancel()
    assert fired == ["early", "late"]
    assert len(s) == 1 and s.due("moved") is not None
