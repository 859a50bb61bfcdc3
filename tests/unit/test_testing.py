"""``kubestep.testing``: workflows tested in memory, with the semantics the cluster gives them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from kubestep import WorkflowContext, examples, workflow
from kubestep import _protocol as api
from kubestep.testing import WorkflowEnvironment

CALLS: list[str] = []


def _count(key: str) -> str:
    CALLS.append(key)
    return key


@workflow(id="testing-replay")
async def replayed(ctx: WorkflowContext, input: Any) -> list[str]:
    a = await ctx.step.run("a", _count, "a")
    await ctx.step.wait_for("nap", hours=6)
    b = await ctx.step.run("b", _count, "b")
    return [a, b]


async def test_a_wait_skips_time_and_the_run_resumes_by_replay() -> None:
    CALLS.clear()
    env = WorkflowEnvironment()
    run = await env.run(replayed)
    assert run.phase == api.Phase.COMPLETED and run.result == ["a", "b"]
    assert CALLS == ["a", "b"], "a completed step is never run twice"
    assert run.segments == 2 and run.clock == env.now()
    assert env.now() >= dt.datetime(2026, 1, 1, 6, tzinfo=dt.UTC)


async def test_a_cancel_at_a_boundary_records_the_step_in_flight_and_starts_no_other() -> None:
    run = await WorkflowEnvironment().run(
        examples.steps, {"count": 5, "seconds": 0}, cancel_after_steps=2, reason="changed my mind"
    )
    assert (run.phase, run.reason) == (api.Phase.CANCELLED, api.StopReason.REQUESTED)
    assert run.completed_steps() == ["step-0", "step-1"]
    run = await WorkflowEnvironment().run(examples.steps, {"count": 5, "seconds": 0}, timeout_before="step-3")
    assert (run.phase, run.reason, run.completed_steps()) == (
        api.Phase.CANCELLED,
        api.StopReason.RUN_TIMEOUT,
        ["step-0", "step-1", "step-2"],
    )


async def test_cleanup_runs_after_a_stop_and_not_after_the_grace_period() -> None:
    run = await WorkflowEnvironment().run(examples.slow_step_cleanup, {"seconds": 0}, cancel_before="never")
    assert run.phase == api.Phase.CANCELLED and run.step("release")["cleanup"] is True
    assert run.step("release")["output"]["stop"] == {"reason": api.StopReason.REQUESTED, "grace_expired": False}
    run = await WorkflowEnvironment().run(examples.hang, {"kind": "async"}, hard_stop_at="hang")
    assert (run.phase, run.reason) == (api.Phase.CANCELLED, api.Reason.GRACE_EXPIRED)
    assert run.step("hang")["state"] == api.StepState.INTERRUPTED and "release" not in {s["key"] for s in run.steps}


async def test_events_are_delivered_once_each_and_a_missing_one_times_out() -> None:
    env = WorkflowEnvironment()
    env.send_event("approved", {"by": "alice"})
    env.send_event("approved", {"by": "bob"})
    run = await env.run(examples.approval, {"count": 2})
    assert run.phase == api.Phase.COMPLETED and run.result["events"] == [{"by": "alice"}, {"by": "bob"}]
    run = await WorkflowEnvironment().run(examples.approval, {"count": 1, "timeout": 3600})
    assert run.phase == api.Phase.FAILED and type(run.error).__name__ == "EventTimeoutError"
    with pytest.raises(ValueError, match="already sent"):
        env.send_event("approved", name="approved-0")


async def test_step_timeouts_and_failures_look_as_they_do_on_a_cluster() -> None:
    run = await WorkflowEnvironment().run(examples.step_timeout, {"seconds": 5, "timeout": 0.05, "catch": True})
    assert run.phase == api.Phase.COMPLETED and run.step("slow")["state"] == api.StepState.INTERRUPTED
    run = await WorkflowEnvironment().run(examples.fails, {"message": "no"})
    assert (run.phase, run.reason, str(run.error)) == (api.Phase.FAILED, "WorkflowError", "no")
    assert run.step("boom")["state"] == api.StepState.FAILED


async def test_the_replay_rule_catches_a_workflow_that_branches_on_something_else() -> None:
    # Non-deterministic code (here: a module-level flag flipped between segments, as a redeploy
    # or a read of the clock would) is caught in the workflow's own unit test, as in production.
    flip = {"renamed": False}

    async def noop() -> str:
        return "ok"

    @workflow(id="test-flaky-branch")
    async def flaky(ctx: WorkflowContext, _: Any) -> str:
        await ctx.step.run("fetch-v2" if flip["renamed"] else "fetch", noop)
        flip["renamed"] = True
        await ctx.step.wait_for("pause", seconds=60)
        return await ctx.step.run("store", noop)

    run = await WorkflowEnvironment().run(flaky)
    assert run.phase == "Failed" and run.reason == "ReplayMismatch"
    assert "step 'fetch' (Completed) next, but the code starts step 'fetch-v2' instead" in str(run.error)


async def test_steps_started_together_replay_in_any_order_in_memory_too() -> None:
    import asyncio

    order: list[str] = []

    async def note(k: str) -> str:
        order.append(k)
        return k

    @workflow(id="test-gather-replay")
    async def together(ctx: WorkflowContext, _: Any) -> list[str]:
        got = list(await asyncio.gather(ctx.step.run("a", note, "a"), ctx.step.run("b", note, "b")))
        await ctx.step.wait_for("w", seconds=1)
        return [*got, await ctx.step.run("c", note, "c")]

    run = await WorkflowEnvironment().run(together)
    assert run.phase == "Completed" and run.result == ["a", "b", "c"] and order == ["a", "b", "c"]
