"""A process on its way out sends its last Events first (``kubestep._kube.settle``): a worker that
restarted itself to shed a runaway step (exit 75) once left before the Event saying why was sent."""

from __future__ import annotations

import asyncio

from kubestep._kube import background, settle


async def test_settle_waits_for_the_requests_still_in_flight() -> None:
    sent: list[str] = []

    async def post(reason: str) -> None:
        await asyncio.sleep(0.05)
        sent.append(reason)

    background(post("WorkerRestarting"))
    background(post("Released"))
    await settle(30)
    assert sorted(sent) == ["Released", "WorkerRestarting"]


async def test_settle_gives_up_after_its_timeout() -> None:
    never = asyncio.Event()
    task = background(never.wait())
    await settle(0.01)
    assert not task.done()
    never.set()
    await task
