"""Replay never hands one step's output to another (issue 10): a run resumed by code that no longer
matches its record ends Failed (``ReplayMismatch``) at the first mismatch, naming the recorded step
and what the code did instead; across a wait and across a worker restart."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubestep import KubestepClient

from .harness import E2E, until_phase

pytestmark = pytest.mark.skipif(E2E, reason="rewrites a workflow's code between attempts: local workers only")


class Plan:
    def __init__(self, tmp_path: Path) -> None:
        self.path, self.log = tmp_path / "plan.json", tmp_path / "ran.log"
        self.log.touch()

    def write(self, *steps: tuple[str, str, float]) -> None:
        self.path.write_text(json.dumps([list(s) for s in steps]))

    def ran(self) -> list[str]:
        return self.log.read_text().split()

    def input(self) -> dict[str, Any]:
        return {"plan": str(self.path), "log": str(self.log)}


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        # renamed: the recorded step is never reached again; the new one must not start
        ([("run", "fetch-v2", 0), ("wait", "pause", 0.1), ("run", "store", 0)], "step 'fetch' (Completed) next, but the code starts step 'fetch-v2'"),
        # reordered: a step recorded earlier is reached later
        ([("wait", "pause", 0.1), ("run", "fetch", 0), ("run", "store", 0)], "step 'fetch' (Completed) next, but the code waits at 'pause'"),
        # a recorded wait that the new code never reaches (it returns instead)
        ([("run", "fetch", 0)], "wait 'pause' (Waiting) next, but the code returns"),
        # the same key, another kind of step
        ([("run", "fetch", 0), ("run", "pause", 0), ("run", "store", 0)], "'pause' is recorded as a wait, but the code now makes it a step"),
    ],
    ids=["renamed", "reordered", "wait-never-reached", "kind-changed"],
)  # fmt: skip
async def test_code_changed_across_a_wait_fails_the_run_at_the_first_mismatch(
    client: KubestepClient, workers: Callable[..., Any], tmp_path: Path, after: list[Any], expected: str
) -> None:
    workers(module="tests.workflows")
    plan = Plan(tmp_path)
    plan.write(("run", "fetch", 0), ("wait", "pause", 2), ("run", "store", 0))
    h = await client.start("versioned", plan.input())
    await until_phase(client, h.id, "Waiting")
    plan.write(*after)  # a redeploy while the run waits
    e = await until_phase(client, h.id, "Failed", "Completed", timeout=30)
    assert e.status.phase == "Failed" and e.status.reason == "ReplayMismatch", e.status
    assert e.status.error and expected in e.status.error["message"], e.status.error
    assert plan.ran() == ["fetch"]  # nothing of the new code ran: no step got another's record
    assert e.status.error["type"] == "ReplayMismatch"


async def test_code_changed_across_a_worker_restart_fails_the_run(
    client: KubestepClient, workers: Callable[..., Any], tmp_path: Path
) -> None:
    first = workers(module="tests.workflows")
    plan = Plan(tmp_path)
    plan.write(("run", "fetch", 0), ("run", "slow", 30), ("run", "store", 0))
    h = await client.start("versioned", plan.input())
    await until_phase(client, h.id, "Running")
    for _ in range(100):
        if plan.ran() == ["fetch", "slow"]:
            break
        await __import__("asyncio").sleep(0.05)
    first.signal(signal.SIGKILL)  # "fetch" recorded, "slow" in flight
    plan.write(("run", "prepare", 0), ("run", "slow", 0), ("run", "store", 0))  # a new first step
    workers(module="tests.workflows")
    e = await until_phase(client, h.id, "Failed", "Completed", timeout=30)
    assert e.status.reason == "ReplayMismatch", e.status
    assert (
        e.status.error
        and "step 'fetch' (Completed) next, but the code starts step 'prepare'" in e.status.error["message"]
    )
    assert plan.ran() == ["fetch", "slow"]


async def test_steps_started_together_replay_in_any_order(
    client: KubestepClient, workers: Callable[..., Any], tmp_path: Path
) -> None:
    # The unchanged code resumes after a wait: no false mismatch (the rule is not "same order").
    workers(module="tests.workflows")
    plan = Plan(tmp_path)
    plan.write(("run", "a", 0), ("wait", "w", 0.5), ("run", "b", 0))
    h = await client.start("versioned", plan.input())
    e = await until_phase(client, h.id, "Completed", "Failed", timeout=30)
    assert e.status.phase == "Completed", e.status
    assert plan.ran() == ["a", "b"]
