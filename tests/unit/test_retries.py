"""Step retries: the policy's rules, and the schedule as ``kubestep.testing`` runs it (the same loop,
``Step.run``, drives the worker: ``tests/test_retries.py`` runs it on the control plane)."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from typing import Any

import pytest

from kubestep import RetryPolicy, StepTimeoutError, WorkflowContext, workflow
from kubestep import _protocol as api
from kubestep._retry import MAX_ATTEMPTS, resolve
from kubestep.testing import InjectedFailure, WorkflowEnvironment

# ----- the policy --------------------------------------------------------------------------------


def test_the_schedule_grows_by_the_coefficient_up_to_the_cap() -> None:
    p = RetryPolicy(max_attempts=6, initial_interval=1, backoff_coefficient=3, max_interval=20)
    assert [p.delay(n) for n in range(1, 6)] == [1, 3, 9, 20, 20]
    assert RetryPolicy(max_attempts=100, backoff_coefficient=100, max_interval=60).delay(99) == 60  # no overflow


def test_polos_keywords_mean_retries_after_the_first_attempt() -> None:
    p = resolve(None, 2, 0.5, 4)
    assert p == RetryPolicy(max_attempts=3, initial_interval=0.5, backoff_coefficient=2, max_interval=4)
    assert resolve(None, None, None, None) is None
    with pytest.raises(TypeError, match="not both"):
        resolve(RetryPolicy(), 2, None, None)
    with pytest.raises(TypeError, match="need max_retries"):
        resolve(None, None, 1.0, None)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_attempts": 0}, "between 1 and"),
        ({"max_attempts": MAX_ATTEMPTS + 1}, "unbounded schedule"),
        ({"max_attempts": math.inf}, "must be an int"),
        ({"max_attempts": True}, "must be an int"),
        ({"initial_interval": -1}, "initial_interval"),
        ({"initial_interval": math.nan}, "initial_interval"),
        ({"backoff_coefficient": 0.5}, "backoff_coefficient"),
        ({"max_interval": math.inf}, "max_interval"),
        ({"initial_interval": 10, "max_interval": 5}, "must not be less"),
        ({"non_retryable": (42,)}, "exception classes"),
    ],
)
def test_a_policy_no_timeout_could_stop_is_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        RetryPolicy(**kwargs)


def test_what_is_final() -> None:
    p = RetryPolicy(max_attempts=3, non_retryable=(KeyError, "PermissionError"))
    assert p.next_delay(ValueError(), 1) == 1.0 and p.next_delay(ValueError(), 2) == 2.0
    assert p.next_delay(ValueError(), 3) is None  # the attempts ran out
    assert p.next_delay(KeyError(), 1) is None and p.next_delay(PermissionError(), 1) is None
    assert p.next_delay(asyncio.CancelledError(), 1) is None  # not an Exception: never retried


# ----- the schedule, in memory -------------------------------------------------------------------

CALLS: list[int] = []


def _flaky(fail_first: int) -> str:
    CALLS.append(len(CALLS) + 1)
    if len(CALLS) <= fail_first:
        raise ConnectionError(f"call {len(CALLS)} failed")
    return f"ok after {len(CALLS)}"


@workflow(id="test-retry-flaky")
async def flaky(ctx: WorkflowContext, input: Any) -> Any:
    policy = RetryPolicy(max_attempts=input["attempts"], initial_interval=1, backoff_coefficient=2)
    out = await ctx.step.run("charge", _flaky, input["fail"], retry=policy)
    await ctx.step.run("after", lambda: "after")
    return out


async def test_a_failing_step_is_retried_each_attempt_recorded_and_never_run_again_on_replay() -> None:
    CALLS.clear()
    env = WorkflowEnvironment()
    t0 = env.now()
    run = await env.run(flaky, {"attempts": 3, "fail": 2})
    assert (run.phase, run.result) == (api.Phase.COMPLETED, "ok after 3")
    assert CALLS == [1, 2, 3], "each attempt runs once: replay continues the schedule"
    keys = [(s["key"], s["state"], s.get("attempt")) for s in run.steps]
    assert keys == [
        ("charge", api.StepState.FAILED, 1),
        ("charge~backoff-1", api.StepState.COMPLETED, None),
        ("charge~attempt-2", api.StepState.FAILED, 2),
        ("charge~backoff-2", api.StepState.COMPLETED, None),
        ("charge~attempt-3", api.StepState.COMPLETED, 3),
        ("after", api.StepState.COMPLETED, None),
    ]
    assert run.step("charge")["error"]["message"] == "call 1 failed" and "retryAt" in run.step("charge")
    assert "retryAt" not in run.step("charge~attempt-3")
    assert run.segments == 3, "every backoff is a durable wait: the worker is freed"
    assert env.now() - t0 == dt.timedelta(seconds=3), "backoffs of 1 s and 2 s"


async def test_when_the_attempts_run_out_the_last_error_fails_the_run() -> None:
    CALLS.clear()
    run = await WorkflowEnvironment().run(flaky, {"attempts": 2, "fail": 5})
    assert (run.phase, run.reason) == (api.Phase.FAILED, api.Reason.WORKFLOW_ERROR)
    assert isinstance(run.error, ConnectionError) and str(run.error) == "call 2 failed"
    assert CALLS == [1, 2]
    assert "retryAt" not in run.step("charge~attempt-2"), "the last failure is final"
    assert "after" not in {s["key"] for s in run.steps}


@pytest.mark.parametrize("stop", ["cancel_before", "timeout_before"])
async def test_a_stop_during_a_backoff_ends_the_run_with_no_further_attempt(stop: str) -> None:
    CALLS.clear()
    run = await WorkflowEnvironment().run(flaky, {"attempts": 5, "fail": 5}, **{stop: "charge~backoff-2"})
    assert run.phase == api.Phase.CANCELLED
    assert CALLS == [1, 2]
    assert {s["key"] for s in run.steps} == {"charge", "charge~backoff-1", "charge~attempt-2"}


async def test_injected_failures_and_a_non_retryable_error() -> None:
    @workflow(id="test-retry-injected")
    async def injected(ctx: WorkflowContext, input: Any) -> Any:
        return await ctx.step.run("pay", lambda: "paid", max_retries=3, base_delay=0.5, max_delay=1)

    run = await WorkflowEnvironment().run(injected, fail_attempts={"pay": 3})
    assert (run.phase, run.result) == (api.Phase.COMPLETED, "paid")
    assert [s.get("attempt") for s in run.steps if s["kind"] == "Run"] == [1, 2, 3, 4]
    run = await WorkflowEnvironment().run(injected, fail_attempts={"pay": 4})
    assert run.phase == api.Phase.FAILED and isinstance(run.error, InjectedFailure)

    @workflow(id="test-retry-final")
    async def final(ctx: WorkflowContext, input: Any) -> Any:
        def bad() -> None:
            raise PermissionError("no")

        return await ctx.step.run("pay", bad, retry=RetryPolicy(max_attempts=5, non_retryable=(PermissionError,)))

    run = await WorkflowEnvironment().run(final)
    assert run.phase == api.Phase.FAILED and [s["key"] for s in run.steps] == ["pay"]


async def test_a_step_timeout_applies_to_each_attempt() -> None:
    @workflow(id="test-retry-timeout")
    async def slow(ctx: WorkflowContext, input: Any) -> Any:
        async def hang() -> None:
            await asyncio.sleep(5)

        return await ctx.step.run("slow", hang, timeout=0.01, retry=RetryPolicy(max_attempts=2))

    run = await WorkflowEnvironment().run(slow)
    assert run.phase == api.Phase.FAILED and isinstance(run.error, StepTimeoutError)
    assert [(s["key"], s["state"]) for s in run.steps if s["kind"] == "Run"] == [
        ("slow", api.StepState.INTERRUPTED),
        ("slow~attempt-2", api.StepState.INTERRUPTED),
    ]


async def test_a_cleanup_step_is_not_retried_once_the_run_is_stopping() -> None:
    @workflow(id="test-retry-cleanup")
    async def cleanup(ctx: WorkflowContext, input: Any) -> Any:
        try:
            await ctx.step.run("work", lambda: 1)
            await ctx.step.run("more", lambda: 2)
        finally:
            if ctx.stop:
                async with ctx.cleanup():
                    await ctx.step.run("release", lambda: 3, max_retries=5)

    run = await WorkflowEnvironment().run(cleanup, cancel_before="more", fail_attempts={"release": 1})
    assert run.phase == api.Phase.CANCELLED
    assert run.step("release")["state"] == api.StepState.FAILED and "retryAt" not in run.step("release")
    assert "release~backoff-1" not in {s["key"] for s in run.steps}
