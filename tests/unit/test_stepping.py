"""One execution of a step (``_worker/stepping.StepCall``): finishing, timing out, being cut off."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from kubestep import InvalidInputError
from kubestep._worker.stepping import StepCall


async def test_an_async_step_returns_json() -> None:
    async def step(x: int) -> dict[str, int]:
        await asyncio.sleep(0)
        return {"x": x}

    call = StepCall(step, (1,), {})
    assert await call.finished(None) and await call.output() == {"x": 1}


async def test_a_sync_step_runs_in_a_thread_and_keeps_the_loop_alive() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    t = asyncio.ensure_future(ticker())
    call = StepCall(time.sleep, (0.2,), {})
    assert call.sync and await call.finished(None)
    t.cancel()
    assert ticks >= 5  # the loop ran while the step slept


async def test_a_timed_out_async_step_is_cancelled_at_its_await() -> None:
    call = StepCall(asyncio.sleep, (60,), {})
    assert not await call.finished(0.05)
    assert await call.cut_off(settle=0.5)


async def test_a_task_that_swallows_cancellation_is_abandoned() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue  # refuses to stop

    call = StepCall(stubborn, (), {})
    assert not await call.finished(0.01)
    assert not await call.cut_off(settle=0.1)
    release.set()
    call.future.cancel()


async def test_a_thread_that_returns_soon_after_the_cut_is_not_abandoned_and_one_that_does_not_is() -> None:
    quick = StepCall(time.sleep, (0.1,), {})
    await asyncio.sleep(0.02)  # the thread is running
    assert await quick.cut_off(settle=1.0)
    stop = threading.Event()
    stuck = StepCall(stop.wait, (30,), {})
    await asyncio.sleep(0.02)
    assert not await stuck.cut_off(settle=0.1)
    stop.set()
    await asyncio.wait({stuck.future}, timeout=2)


async def test_a_value_json_cannot_carry_fails_the_step() -> None:
    async def nan() -> float:
        return float("nan")

    call = StepCall(nan, (), {})
    await call.finished(None)
    with pytest.raises(InvalidInputError, match="not JSON"):
        await call.output()


async def test_a_sync_step_cut_off_before_its_thread_started_never_runs() -> None:
    ran = threading.Event()
    call = StepCall(ran.set, (), {})
    assert await call.cut_off(settle=0.1)  # cancelled before the executor picked it up
    await asyncio.sleep(0.1)
    assert not ran.is_set()
