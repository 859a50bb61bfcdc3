"""The soak's workflows. Every step appends a line to an external log (``KUBESTEP_CHAOS_LOG``): the
soak judges what ran from that log, never from Kubestep's own word."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from typing import Any

from kubestep import ChildCall, RetryPolicy, WorkflowContext, workflow


def _log(run: str, key: str, ev: str, out: str | None = None) -> None:
    line = json.dumps({"run": run, "key": key, "ev": ev, "pid": os.getpid(), "t": time.time(), "out": out})
    fd = os.open(os.environ["KUBESTEP_CHAOS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())  # one small O_APPEND write: lines never interleave
    finally:
        os.close(fd)


async def _step(run: str, key: str, seconds: float) -> str:
    _log(run, key, "start")
    await asyncio.sleep(seconds)
    out = uuid.uuid4().hex[:12]
    _log(run, key, "end", out)
    return out


def _blocking(run: str, key: str, seconds: float) -> str:
    _log(run, key, "start")
    time.sleep(seconds)
    out = uuid.uuid4().hex[:12]
    _log(run, key, "end", out)
    return out


def _raises(run: str, key: str) -> None:
    _log(run, key, "start")
    _log(run, key, "end", "raised")
    raise ValueError(f"{key} fails on purpose")


# A retried step's attempts (``retries``): it always fails, so every attempt is one the policy started.
FLAKY_ATTEMPTS = 3


@workflow(id="chaos")
async def chaos(ctx: WorkflowContext, input: dict[str, Any]) -> list[str]:
    """``shape``: seq, waits, concurrent, raises, sync, retries (a step retried until its attempts run
    out, caught) or tree (two child runs of the seq shape, waited for, then the steps); ``steps`` steps
    of ``seconds``."""
    run, shape = ctx.execution_id, input["shape"]
    n, seconds = int(input.get("steps", 6)), float(input.get("seconds", 0.3))
    out: list[str] = []
    if shape == "tree":
        child = {"shape": "seq", "steps": n, "seconds": seconds}
        await ctx.step.batch_invoke_and_wait("children", [ChildCall("chaos", child), ChildCall("chaos", child)])
    if shape == "retries":
        policy = RetryPolicy(max_attempts=FLAKY_ATTEMPTS, initial_interval=0.5)
        try:
            await ctx.step.run("flaky", _raises, run, "flaky", retry=policy)
        except ValueError:
            pass
    if shape == "concurrent":
        for first in range(0, n, 3):
            keys = [f"s{i}" for i in range(first, min(first + 3, n))]
            out += await asyncio.gather(*(ctx.step.run(k, _step, run, k, seconds) for k in keys))
        return out
    for i in range(n):
        key = f"s{i}"
        fn = _blocking if shape == "sync" else _step
        out.append(await ctx.step.run(key, fn, run, key, seconds))
        if shape == "waits" and i % 2 == 1:
            await ctx.step.wait_for(f"w{i}", seconds=1.0)
        if shape == "raises" and i == n // 2:
            await ctx.step.run("boom", _raises, run, "boom")
    return out
