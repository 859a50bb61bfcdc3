"""The operator's write backlog and retry backoff: pure logic, no cluster needed."""

from __future__ import annotations

import asyncio
import random

import pytest

from kubestep import _protocol as api
from kubestep_operator.reconciling import Decision, Urgency, urgency
from kubestep_operator.writing import Backlog, retry_delay

from .test_reconciling import snap


async def drain(b: Backlog[str]) -> list[str]:
    taken = []
    while len(b):
        key = await asyncio.wait_for(b.take(), 1)
        taken.append(key)
        b.done(key)
    return taken


async def test_most_urgent_first_and_first_come_first_served_within_a_level() -> None:
    b: Backlog[str] = Backlog()
    for i in range(1000):
        b.offer(f"admit-{i}", Urgency.ADMIT)
    b.offer("wake", Urgency.PROGRESS)
    b.offer("cancel-last", Urgency.STOP)
    taken = await drain(b)
    assert taken[:3] == ["cancel-last", "wake", "admit-0"]
    assert taken[3:] == [f"admit-{i}" for i in range(1, 1000)]


async def test_a_key_is_held_once_and_a_repeat_offer_only_raises_its_urgency() -> None:
    b: Backlog[str] = Backlog()
    b.offer("a", Urgency.ADMIT)
    b.offer("b", Urgency.ADMIT)
    b.offer("b", Urgency.ADMIT)  # superseded by a newer event: still one entry
    b.offer("b", Urgency.STOP)  # a cancel arrived for b: it jumps the queue
    b.offer("b", Urgency.ADMIT)  # a later, less urgent offer does not demote it
    assert len(b) == 2
    assert b.count(Urgency.STOP) == 1 and b.count(Urgency.ADMIT) == 1
    assert await drain(b) == ["b", "a"]


async def test_a_key_being_written_is_not_handed_out_twice_and_an_offer_meanwhile_is_kept() -> None:
    b: Backlog[str] = Backlog()
    b.offer("r", Urgency.ADMIT)
    assert await b.take() == "r"
    b.offer("r", Urgency.STOP)  # a newer event while the write is in flight
    second = asyncio.ensure_future(b.take())
    await asyncio.sleep(0.01)
    assert not second.done(), "a second writer must not take a key in flight"
    b.done("r")
    assert await asyncio.wait_for(second, 1) == "r"  # decided again on the newer state
    b.done("r")
    assert len(b) == 0 and b.busy == 0


async def test_discard_forgets_a_pending_offer() -> None:
    b: Backlog[str] = Backlog()
    b.offer("gone", Urgency.STOP)
    b.offer("kept", Urgency.ADMIT)
    b.discard("gone")
    assert await drain(b) == ["kept"]


async def test_waiting_writers_wake_one_per_offer() -> None:
    b: Backlog[str] = Backlog()
    writers = [asyncio.ensure_future(b.take()) for _ in range(3)]
    await asyncio.sleep(0)
    b.offer("x", Urgency.ADMIT)
    await asyncio.sleep(0.01)
    assert sum(w.done() for w in writers) == 1
    for w in writers:
        w.cancel()
    await asyncio.gather(*writers, return_exceptions=True)


def test_retry_delay_grows_exponentially_with_jitter_and_a_cap() -> None:
    rng = random.Random(7)
    for failures, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (50, 30.0)]:
        delays = [retry_delay(failures, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4, "retries that failed together must spread out"


@pytest.mark.parametrize(
    ("phase", "patch", "want"),
    [
        (None, {"phase": api.Phase.QUEUED}, Urgency.ADMIT),
        (None, {"phase": api.Phase.CANCELLED}, Urgency.STOP),
        (api.Phase.QUEUED, {"reason": "NoWorker"}, Urgency.ADMIT),
        (api.Phase.QUEUED, {"phase": api.Phase.CANCELLED}, Urgency.STOP),
        (api.Phase.RUNNING, {"phase": api.Phase.CANCELLING}, Urgency.STOP),
        (api.Phase.RUNNING, {"phase": api.Phase.QUEUED, "reason": "WorkerLost"}, Urgency.PROGRESS),
        (api.Phase.WAITING, {"phase": api.Phase.QUEUED, "reason": "WaitOver"}, Urgency.PROGRESS),
    ],
)
def test_stopping_is_the_most_urgent_write(phase: str | None, patch: dict[str, str], want: Urgency) -> None:
    assert urgency(snap(phase), Decision(patch=patch)) == want
