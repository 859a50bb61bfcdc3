"""Example workflows: the demo's four, and the ones the end-to-end suite drives.

They ship with the SDK so the same worker image serves them on kind
(``kubestep worker kubestep.examples``) as local worker processes do in tests.
Each step's output says which worker ran it and a fresh token, so a test can
tell a replayed output from a re-run step.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from typing import Any

from ._context import ChildCall, WorkflowContext
from ._errors import ChildError
from ._retry import RetryPolicy
from ._workflow import workflow


def _stamp(i: int) -> dict[str, Any]:
    return {"i": i, "token": uuid.uuid4().hex, "worker": os.environ.get("POD_NAME") or socket.gethostname()}


async def _sleep_step(i: int, seconds: float) -> dict[str, Any]:
    await asyncio.sleep(seconds)
    return _stamp(i)


@workflow(id="steps")
async def steps(ctx: WorkflowContext, input: dict[str, Any] | None) -> dict[str, Any]:
    """``count`` steps of ``seconds`` each; optional ``wait_after`` (step index) and ``wait_seconds``."""
    cfg = input or {}
    outputs = []
    for i in range(int(cfg.get("count", 3))):
        outputs.append(await ctx.step.run(f"step-{i}", _sleep_step, i, float(cfg.get("seconds", 0.1))))
        if cfg.get("wait_after") == i:
            await ctx.step.wait_for(f"wait-{i}", seconds=float(cfg.get("wait_seconds", 1)))
    return {"steps": len(outputs), "tokens": [o["token"] for o in outputs]}


def _blocking_step(i: int, seconds: float) -> dict[str, Any]:
    import time

    time.sleep(seconds)  # a synchronous step: runs in a thread, the worker stays responsive
    return _stamp(i)


@workflow(id="sync-steps")
async def sync_steps(ctx: WorkflowContext, input: dict[str, Any] | None) -> int:
    cfg = input or {}
    for i in range(int(cfg.get("count", 3))):
        await ctx.step.run(f"step-{i}", _blocking_step, i, float(cfg.get("seconds", 0.1)))
    return int(cfg.get("count", 3))


@workflow(id="until-cancelled")
async def until_cancelled(ctx: WorkflowContext, input: dict[str, Any] | None) -> None:
    """Steps forever, ``seconds`` each (the benchmark's 10 ms steps); ends only by cancel or timeout."""
    seconds = float((input or {}).get("seconds", 0.01))
    i = 0
    while True:
        await ctx.step.run(f"step-{i}", _sleep_step, i, seconds)
        i += 1


def _fails_before(segment: int, succeed_in: int, seconds: float) -> dict[str, Any]:
    """Fails while the run is in a segment before ``succeed_in`` (each backoff is a wait: one
    segment per attempt), so the same attempts fail on any worker."""
    import time

    time.sleep(seconds)
    if segment < succeed_in:
        raise ConnectionError(f"attempt in segment {segment} failed")
    return _stamp(segment)


@workflow(id="retrying")
async def retrying(ctx: WorkflowContext, input: dict[str, Any] | None) -> dict[str, Any]:
    """One step retried: it fails until the ``succeed_in``-th running segment; ``attempts``,
    ``interval`` (the first backoff, doubling) and ``seconds`` (each attempt's own time)."""
    cfg = input or {}
    out: dict[str, Any] = await ctx.step.run(
        "flaky",
        _fails_before,
        ctx.attempt,
        int(cfg.get("succeed_in", 3)),
        float(cfg.get("seconds", 0)),
        retry=RetryPolicy(max_attempts=int(cfg.get("attempts", 3)), initial_interval=float(cfg.get("interval", 0.5))),
    )
    await ctx.step.run("after", _sleep_step, 0, 0)
    return out


@workflow(id="tree")
async def tree(ctx: WorkflowContext, input: dict[str, Any] | None) -> dict[str, Any]:
    """A tree of child runs: ``depth`` levels of ``fanout`` children each, every level waiting for its
    children (unless ``wait`` is false: then it steps on). Leaves run ``leaf`` steps of ``seconds``
    (0: forever, until cancelled), or with ``idle`` wait for an event that never comes; ``after``: steps
    the run makes after its children (-1: forever); ``child_timeout``: the children's budget."""
    cfg = input or {}
    depth, seconds = int(cfg.get("depth", 1)), float(cfg.get("seconds", 0.05))
    if depth <= 0:
        if cfg.get("idle"):
            await ctx.step.wait_for_event("idle", "never")  # Waiting: no worker holds it, no step runs
            return {"leaf": ctx.execution_id}
        n, i = int(cfg.get("leaf", 0)), 0
        while n == 0 or i < n:
            await ctx.step.run(f"leaf-{i}", _sleep_step, i, seconds)
            i += 1
        return {"leaf": ctx.execution_id}
    budget = cfg.get("child_timeout")  # the children's runTimeoutSeconds (default: the parent's)
    calls = [
        ChildCall("tree", {**cfg, "depth": depth - 1}, run_timeout_seconds=None if budget is None else int(budget))
        for _ in range(int(cfg.get("fanout", 2)))
    ]
    handles = await ctx.step.batch_invoke("children", calls)
    ended: list[str] = []
    if cfg.get("wait", True):
        ended = [o.phase for o in await ctx.step.wait_children("children~wait", handles)]
    after, i = int(cfg.get("after", 0)), 0
    while after < 0 or i < after:
        await ctx.step.run(f"after-{i}", _sleep_step, i, seconds)
        i += 1
    return {"children": [h.id for h in handles], "ended": ended}


@workflow(id="parent-of")
async def parent_of(ctx: WorkflowContext, input: dict[str, Any] | None) -> dict[str, Any]:
    """Starts one child of ``workflow`` (with ``input``, and ``timeout`` as its own budget) and waits
    for it: what the parent saw, the child's result or its typed error."""
    cfg = input or {}
    try:
        result = await ctx.step.invoke_and_wait(
            "child", str(cfg["workflow"]), cfg.get("input"), run_timeout_seconds=cfg.get("timeout")
        )
        return {"result": result}
    except ChildError as e:
        return {"error": type(e).__name__, "message": str(e)}


@workflow(id="swallow")
async def swallow(ctx: WorkflowContext, input: dict[str, Any] | None) -> str:
    """Tries to swallow its cancellation with ``except Exception``; it cannot."""
    i = 0
    while i < 10_000:
        try:
            await ctx.step.run(f"step-{i}", _sleep_step, i, 0.05)
        except Exception:
            pass
        i += 1
    return "never finished by cancellation"


@workflow(id="fails")
async def fails(ctx: WorkflowContext, input: dict[str, Any] | None) -> None:
    await ctx.step.run("ok", _sleep_step, 0, 0.01)

    def boom() -> None:
        raise ValueError(str((input or {}).get("message", "boom")))

    await ctx.step.run("boom", boom)


@workflow(id="wait-then-finish")
async def wait_then_finish(ctx: WorkflowContext, input: dict[str, Any] | None) -> str:
    """A step, a wait longer than the run budget, a step: still completes (waits don't count)."""
    cfg = input or {}
    await ctx.step.run("before", _sleep_step, 0, float(cfg.get("seconds", 1)))
    await ctx.step.wait_for("pause", seconds=float(cfg.get("wait_seconds", 3)))
    await ctx.step.run("after", _sleep_step, 1, float(cfg.get("seconds", 1)))
    return "done"


@workflow(id="wait-with-cleanup")
async def wait_with_cleanup(ctx: WorkflowContext, input: dict[str, Any] | None) -> str:
    """A wait inside ``try``/``finally`` whose cleanup awaits: a cancel that lands while
    the wait unwinds must still end the run (``cleanup_seconds`` long)."""
    cfg = input or {}
    await ctx.step.run("before", _sleep_step, 0, 0.01)
    try:
        await ctx.step.wait_for("pause", seconds=float(cfg.get("wait_seconds", 30)))
    finally:
        await asyncio.sleep(float(cfg.get("cleanup_seconds", 2)))
    return "done"


@workflow(id="big-result")
async def big_result(ctx: WorkflowContext, input: dict[str, Any] | None) -> str:
    """Returns ``bytes`` characters: more than an object can hold (etcd's limit is about
    1.5 MiB) must end Failed with a clear reason, not be retried for ever."""
    await ctx.step.run("small", _sleep_step, 0, 0.01)
    return "x" * int((input or {}).get("bytes", 2_000_000))


async def _characters(n: int) -> str:
    return "x" * n


@workflow(id="big-outputs")
async def big_outputs(ctx: WorkflowContext, input: dict[str, Any] | None) -> int:
    """``count`` steps each returning ``bytes`` characters: together more than one object holds,
    each alone less (status keeps a few records; the rest go to the journal by their bytes)."""
    cfg = input or {}
    for i in range(int(cfg.get("count", 3))):
        await ctx.step.run(f"out-{i}", _characters, int(cfg.get("bytes", 600_000)))
    return int(cfg.get("count", 3))


# ----- stopping runaway work: grace periods, cleanup, step timeouts -------------------------------


async def _forever() -> None:
    await asyncio.Event().wait()  # an async step that never returns (a hung await)


def _blocking_forever(seconds: float) -> str:
    import time

    time.sleep(seconds)  # a synchronous step nothing can interrupt: its thread is abandoned
    return "woke up"


async def _stubborn() -> None:
    while True:  # swallows its cancellation: async code that will not stop
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            continue


async def _release(what: str, stop: dict[str, Any] | None) -> dict[str, Any]:
    await asyncio.sleep(0.05)
    return {"released": what, "stop": stop}


@workflow(id="hang")
async def hang(ctx: WorkflowContext, input: dict[str, Any] | None) -> str:
    """One quick step, then one that never returns (``kind``: ``async``, ``sync`` or ``stubborn``),
    with a cleanup step that records why the run stopped."""
    cfg = input or {}
    await ctx.step.run("first", _sleep_step, 0, 0.01)
    kind = cfg.get("kind", "async")
    try:
        if kind == "sync":
            await ctx.step.run("hang", _blocking_forever, float(cfg.get("seconds", 3600)))
        elif kind == "stubborn":
            await ctx.step.run("hang", _stubborn)
        else:
            await ctx.step.run("hang", _forever)
    finally:
        if ctx.stop is not None and cfg.get("cleanup", True):
            stop = {
                "reason": ctx.stop.reason,
                "grace_expired": ctx.stop.grace_expired,
                "message": ctx.stop.message,
                "requested_by": ctx.stop.requested_by,
            }
            async with ctx.cleanup():
                await ctx.step.run("release", _release, "lock", stop)
    return "unreachable"


@workflow(id="slow-step-cleanup")
async def slow_step_cleanup(ctx: WorkflowContext, input: dict[str, Any] | None) -> str:
    """A step of ``seconds`` that finishes within the grace period, then cleanup that sees why."""
    cfg = input or {}
    try:
        await ctx.step.run("slow", _sleep_step, 0, float(cfg.get("seconds", 1)))
        await ctx.step.run("never", _sleep_step, 1, 0.01)
    finally:
        if ctx.stop is not None:
            async with ctx.cleanup():
                await ctx.step.run(
                    "release", _release, "job", {"reason": ctx.stop.reason, "grace_expired": ctx.stop.grace_expired}
                )
    return "unreachable"


@workflow(id="step-timeout")
async def step_timeout(ctx: WorkflowContext, input: dict[str, Any] | None) -> dict[str, Any]:
    """A step with a ``timeout`` shorter than it takes; ``catch``: handle StepTimeoutError."""
    from ._errors import StepTimeoutError

    cfg = input or {}
    try:
        await ctx.step.run("slow", _sleep_step, 0, float(cfg.get("seconds", 30)), timeout=float(cfg.get("timeout", 1)))
    except StepTimeoutError as e:
        if not cfg.get("catch"):
            raise
        return {"timed_out": e.key, "after": await ctx.step.run("after", _sleep_step, 1, 0.01)}
    return {"timed_out": None}


@workflow(id="approval")
async def approval(ctx: WorkflowContext, input: dict[str, Any] | None) -> dict[str, Any]:
    """Waits for ``count`` events of topic ``approved`` (``timeout`` seconds each), between steps."""
    cfg = input or {}
    before = await ctx.step.run("before", _sleep_step, 0, 0.01)
    got = []
    for i in range(int(cfg.get("count", 1))):
        got.append(await ctx.step.wait_for_event(f"approval-{i}", "approved", timeout=cfg.get("timeout")))
    after = await ctx.step.run("after", _sleep_step, 1, 0.01)
    return {"events": got, "tokens": [before["token"], after["token"]]}
