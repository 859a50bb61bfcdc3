"""The Temporal side of the side-by-side benchmark: the same workload as Kubestep's ``steps`` and
``until-cancelled`` examples, in its own module so Temporal's workflow sandbox re-imports only this.

Each step is an activity that sleeps ``seconds`` (10 ms). Cancellation follows Kubestep's rule, the step
in flight completes and no later step starts: activities are scheduled with
``WAIT_CANCELLATION_COMPLETED`` and do not heartbeat (so they are never interrupted), and the workflow
raises ``CancelledError`` after a step once a cancel was requested.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.workflow import ActivityCancellationType, ParentClosePolicy


@activity.defn(name="sleep_step")
async def sleep_step(i: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return i


@dataclass
class StepsInput:
    count: int  # < 0: until cancelled
    seconds: float = 0.01


async def _steps(count: int, seconds: float) -> int:
    """``count`` activity steps of ``seconds`` (< 0: until cancelled), Kubestep's cancel rule."""
    i = 0
    while count < 0 or i < count:
        await workflow.execute_activity(
            sleep_step,
            args=[i, seconds],
            start_to_close_timeout=timedelta(seconds=60),
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        i += 1
        if workflow.cancellation_reason() is not None:
            raise asyncio.CancelledError("cancel requested; the step in flight completed")
    return i


@workflow.defn(name="steps")
class Steps:
    @workflow.run
    async def run(self, inp: StepsInput) -> int:
        return await _steps(inp.count, inp.seconds)


@workflow.defn(name="idle")
class Idle:
    """Waits for ever: the floor's signal target (no worker polls its queue)."""

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.signal
    def poke(self, v: int) -> None:
        pass


@dataclass
class TreeInput:
    depth: int  # levels of children below this run (0: a leaf, stepping until cancelled)
    fanout: int
    seconds: float = 0.05


@workflow.defn(name="tree")
class Tree:
    """Kubestep's ``tree`` example: ``fanout`` child workflows per level, ``depth`` levels, each parent
    waiting for its children; leaves step until cancelled. A cancel of the root reaches the children
    as Temporal does it: the parent's wait on its children is cancelled, which requests the cancel of
    each child (and ``ParentClosePolicy.REQUEST_CANCEL`` covers a parent that closes first)."""

    @workflow.run
    async def run(self, inp: TreeInput) -> int:
        if inp.depth <= 0:
            if inp.seconds < 0:  # idle: waits for ever, no activity runs (Kubestep's idle leaves)
                await workflow.wait_condition(lambda: False)
            return await _steps(-1, inp.seconds)
        me = workflow.info().workflow_id
        children = [
            await workflow.start_child_workflow(
                Tree.run,
                TreeInput(inp.depth - 1, inp.fanout, inp.seconds),
                id=f"{me}-{k}",
                parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
            )
            for k in range(inp.fanout)
        ]
        await asyncio.gather(*children)
        return len(children)
