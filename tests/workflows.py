"""Workflows only the tests use (served by a worker started with ``module="tests.workflows"``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from kubestep import WorkflowContext, workflow


async def _note(key: str, seconds: float, log: str) -> str:
    with open(log, "a") as f:  # noqa: ASYNC230  (outside Kubestep: the test reads what really ran)
        f.write(key + "\n")
    await asyncio.sleep(seconds)
    return key


@workflow(id="versioned")
async def versioned(ctx: WorkflowContext, input: dict[str, Any]) -> list[str]:
    """Follows the plan in the file ``input["plan"]``: a list of ``["run", key, seconds]`` and
    ``["wait", key, seconds]``. Rewriting the file between attempts is a change of the workflow's
    code, as a redeploy would make it."""
    plan = json.loads(Path(input["plan"]).read_text())  # noqa: ASYNC240  (tiny, local)
    done = []
    for kind, key, seconds in plan:
        if kind == "run":
            done.append(await ctx.step.run(key, _note, key, seconds, input["log"]))
        else:
            await ctx.step.wait_for(key, seconds=seconds)
    return done


def _emit(kind: str) -> Any:
    values: dict[str, Any] = {
        "nan": float("nan"),
        "infinity": [1.0, float("inf")],
        "a set": {"tags": {1, 2}},
        "deep": _nested(100),
        "huge": "x" * (2 * 1024 * 1024),
    }
    return values[kind]


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"d": value}
    return value


@workflow(id="emits")
async def emits(ctx: WorkflowContext, input: dict[str, Any]) -> Any:
    """One step returning what ``input["kind"]`` names (see ``_emit``); the run returns it too."""
    return await ctx.step.run("emit", _emit, input["kind"])


def _echo(text: str) -> str:
    return text


@workflow(id="echo")
async def echo(ctx: WorkflowContext, input: dict[str, Any]) -> Any:
    """One step whose output is ``input["text"]`` (the UI's XSS test shows it)."""
    return await ctx.step.run("echo", _echo, input["text"])
