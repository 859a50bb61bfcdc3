"""Stopping runaway work on the real control plane: grace periods and the hard stop, cleanup, step
timeouts, who stopped a run and why, queue timeouts and events (issue 8).

The workers are processes serving ``kubestep.examples``; times are measured from the cancel (or the
deadline) to the run's ``finishedAt``, as the run itself records them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from typing import Any

import pytest

from kubestep import KubestepClient
from kubestep import _protocol as api

from .harness import E2E, LEASE_SECONDS, until, until_phase

local_only = pytest.mark.skipif(E2E, reason="starts/stops worker processes: local control plane only, not kind")

GRACE = 2  # seconds: spec.cancelGracePeriodSeconds of the runs below
SLACK = 2.5  # seconds allowed beyond a bound for the watch, the interrupt and the final write


def seconds_between(a: dt.datetime | None, b: dt.datetime | None) -> float:
    assert a is not None and b is not None
    return (b - a).total_seconds()


async def steps_of(client: KubestepClient, name: str) -> dict[str, Any]:
    return {s.key: s for s in await client.step_history(name)}


# ----- 1. a grace period, then a hard stop ---------------------------------------------------------


async def test_an_async_step_that_never_returns_is_interrupted_when_the_grace_period_ends(
    client: KubestepClient, workers: Any
) -> None:
    workers()
    h = await client.start("hang", {"kind": "async"}, cancel_grace_period_seconds=GRACE)
    await until(lambda: _step_started(client, h.id, "hang"), 20, "the hanging step to start")
    asked = time.time()
    assert await client.cancel_execution(h.id, reason="stuck")
    e = await until_phase(client, h.id, api.Phase.CANCELLED, timeout=GRACE + 15)
    took = e.status.finished_at.timestamp() - asked  # type: ignore[union-attr]
    assert GRACE - 0.2 <= took <= GRACE + SLACK, f"ended {took:.2f} s after the cancel"
    assert e.status.reason == api.Reason.GRACE_EXPIRED and "grace period" in (e.status.message or "")
    assert e.status.cancellation and e.status.cancellation.reason == api.StopReason.REQUESTED
    steps = await steps_of(client, h.id)
    assert steps["first"].state == "Completed"
    assert steps["hang"].state == "Interrupted" and steps["hang"].error == {
        "type": api.Reason.GRACE_EXPIRED,
        "message": f"the grace period of {GRACE} s ran out",
    }
    assert "release" not in steps  # cleanup comes within the grace period, not after it


async def _step_started(client: KubestepClient, name: str, key: str) -> bool:
    e = await client.get_execution(name)
    return (
        e.status.phase == api.Phase.RUNNING
        and key not in {s.key for s in e.status.steps}
        and "first" in {s.key for s in e.status.steps}
    )


async def test_an_exhausted_budget_interrupts_a_step_that_never_returns(client: KubestepClient, workers: Any) -> None:
    workers()
    h = await client.start("hang", {"kind": "async"}, run_timeout_seconds=2, cancel_grace_period_seconds=1)
    e = await until_phase(client, h.id, api.Phase.CANCELLED, timeout=20)
    assert e.status.cancellation and e.status.cancellation.reason == api.StopReason.RUN_TIMEOUT
    assert e.status.reason == api.Reason.GRACE_EXPIRED
    # Bounded by the budget plus the grace period, counted from the deadline.
    over = seconds_between(e.status.cancellation.requested_at, e.status.finished_at)
    assert 1 - 0.2 <= over <= 1 + SLACK, f"ended {over:.2f} s after the deadline"
    assert (await steps_of(client, h.id))["hang"].state == "Interrupted"


@local_only
@pytest.mark.parametrize("kind", ["sync", "stubborn"])
async def test_a_step_that_cannot_be_interrupted_is_abandoned_and_the_worker_restarts(
    client: KubestepClient, workers: Any, kind: str
) -> None:
    """A synchronous step's thread cannot be killed, and async code can swallow its cancellation:
    the run still ends on time, and the worker exits (75) so the runaway code dies with it."""
    proc = workers()
    h = await client.start("hang", {"kind": kind, "seconds": 3600}, cancel_grace_period_seconds=1)
    await until(lambda: _step_started(client, h.id, "hang"), 20, "the hanging step to start")
    asked = time.time()
    await client.cancel_execution(h.id)
    e = await until_phase(client, h.id, api.Phase.CANCELLED, timeout=20)
    assert e.status.finished_at.timestamp() - asked <= 1 + SLACK  # type: ignore[union-attr]
    assert e.status.reason == api.Reason.GRACE_EXPIRED
    assert (await steps_of(client, h.id))["hang"].state == "Interrupted"
    assert proc is not None
    await until(lambda: _exited(proc), 20, "the worker to restart itself")
    assert proc.popen.returncode == 75, proc.tail()
    assert "did not stop when interrupted" in proc.tail()
    assert "exiting with 75 to be restarted" in proc.tail()  # said where a person running it sees it
    # The worker's last Event (the run's ending) was sent before it left, not lost with the process.
    events = await client.events(h.id)
    assert any(e.reason == api.Phase.CANCELLED and e.component == "kubestep-worker" for e in events), events


async def _exited(proc: Any) -> bool:
    return not proc.alive()


async def test_a_step_finishing_within_the_grace_period_is_recorded_and_cleanup_sees_why(
    client: KubestepClient, workers: Any
) -> None:
    workers()
    h = await client.start("slow-step-cleanup", {"seconds": 1.5}, cancel_grace_period_seconds=10)
    await until(lambda: _phase_is(client, h.id, api.Phase.RUNNING), 20, "the run to start")
    await asyncio.sleep(0.5)
    await client.cancel_execution(h.id, reason="changed my mind")
    e = await until_phase(client, h.id, api.Phase.CANCELLED, timeout=20)
    assert e.status.reason == api.StopReason.REQUESTED, e.status
    assert "after step 'slow'" in (e.status.message or "")
    steps = await steps_of(client, h.id)
    assert steps["slow"].state == "Completed" and "never" not in steps
    assert steps["release"].state == "Completed" and steps["release"].cleanup
    assert steps["release"].output["stop"] == {"reason": api.StopReason.REQUESTED, "grace_expired": False}


async def _phase_is(client: KubestepClient, name: str, phase: str) -> bool:
    return (await client.get_execution(name)).status.phase == phase


async def test_a_shorter_grace_period_given_with_the_cancel_stops_the_step_now(
    client: KubestepClient, workers: Any
) -> None:
    workers()
    h = await client.start("hang", {"kind": "async"}, cancel_grace_period_seconds=3600)
    await until(lambda: _step_started(client, h.id, "hang"), 20, "the hanging step to start")
    asked = time.time()
    await client.cancel_execution(h.id, grace_period_seconds=0)
    e = await until_phase(client, h.id, api.Phase.CANCELLED, timeout=15)
    assert e.status.finished_at.timestamp() - asked <= SLACK  # type: ignore[union-attr]
    assert e.status.reason == api.Reason.GRACE_EXPIRED
    assert (await client.get_execution(h.id)).cancel_grace_period_seconds == 0


async def test_a_step_timeout_fails_the_step_the_same_way(client: KubestepClient, workers: Any) -> None:
    workers()
    uncaught = await client.start("step-timeout", {"seconds": 60, "timeout": 1})
    caught = await client.start("step-timeout", {"seconds": 60, "timeout": 1, "catch": True})
    e = await until_phase(client, uncaught.id, api.Phase.FAILED, timeout=20)
    assert e.status.error and e.status.error["type"] == "StepTimeoutError"
    assert (await steps_of(client, uncaught.id))["slow"].state == "Interrupted"
    e = await until_phase(client, caught.id, api.Phase.COMPLETED, timeout=20)
    assert e.status.result["timed_out"] == "slow"
    steps = await steps_of(client, caught.id)
    assert steps["slow"].state == "Interrupted" and steps["slow"].error["type"] == "StepTimeout"
    assert steps["after"].state == "Completed"


@local_only
async def test_cancelling_never_outlasts_the_grace_period_plus_one_lease(
    control_plane: Any, client: KubestepClient, run_namespace: str
) -> None:
    """A holder whose Lease stays fresh but which never ends the run (here: a fake worker that only
    renews its Lease): the operator ends it once the grace period and one lease are over."""
    holder = f"ghost-{uuid.uuid4().hex[:5]}"
    lease = await _fake_worker_lease(client, run_namespace, holder)
    renew = asyncio.create_task(_renew_forever(client, run_namespace, lease))
    try:
        h = await client.start("hang", None, cancel_grace_period_seconds=1)
        e = await until_phase(client, h.id, api.Phase.QUEUED, timeout=15)
        path = api.execution_path(run_namespace, h.id, "status")
        await client._kube.merge_patch(
            path,
            {
                "status": {
                    "phase": api.Phase.RUNNING,
                    "worker": holder,
                    "attempt": 1,
                    "startedAt": api.fmt_time(api.now()),
                }
            },
        )
        await client.cancel_execution(h.id)
        e = await until_phase(client, h.id, api.Phase.CANCELLING, timeout=15)
        assert e.status.cancellation is not None
        e = await until_phase(client, h.id, api.Phase.CANCELLED, timeout=1 + LEASE_SECONDS + 15)
        took = seconds_between(e.status.cancellation.requested_at, e.status.finished_at)  # type: ignore[union-attr]
        assert 1 + LEASE_SECONDS - 0.2 <= took <= 1 + LEASE_SECONDS + SLACK, took
        assert e.status.reason == api.Reason.GRACE_EXPIRED and "plus one lease" in (e.status.message or "")
    finally:
        renew.cancel()


async def _fake_worker_lease(client: KubestepClient, namespace: str, holder: str) -> str:
    name = f"{api.LEASE_PREFIX}{holder}"
    await client._kube.create(
        f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases",
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "labels": {api.LABEL_WORKER: "true"},
                "annotations": {api.ANNOTATION_WORKFLOWS: "hang"},
            },
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": api.fmt_time(api.now()),
            },
        },
    )
    return name


async def _renew_forever(client: KubestepClient, namespace: str, name: str) -> None:
    while True:
        await asyncio.sleep(LEASE_SECONDS / 4)
        await client._kube.merge_patch(
            f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}",
            {"spec": {"renewTime": api.fmt_time(api.now())}},
        )


# ----- 3. who stopped it, and why -----------------------------------------------------------------


async def test_the_cancellation_records_the_reason_and_who_asked(
    control_plane: Any, client: KubestepClient, run_namespace: str, workers: Any
) -> None:
    workers()
    by_sdk = await client.start("until-cancelled", {"seconds": 0.05})
    by_kubectl = await client.start("until-cancelled", {"seconds": 0.05})
    queued = await client.start("nobody-serves-this", None)
    for h in (by_sdk, by_kubectl):
        await until_phase(client, h.id, api.Phase.RUNNING, timeout=20)
    await client.cancel_execution(by_sdk.id, reason="budget cut")
    control_plane.kubectl(
        "-n",
        run_namespace,
        "patch",
        "wfx",
        by_kubectl.id,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"cancelRequested": True, "cancelReason": "wrong input"}}),
    )
    await client.cancel_execution(queued.id, reason="not needed")
    for h, manager, said in (
        (by_sdk, "kubestep-sdk", "budget cut"),
        (by_kubectl, "kubectl-patch", "wrong input"),
        (queued, "kubestep-sdk", "not needed"),
    ):
        e = await until_phase(client, h.id, api.Phase.CANCELLED, timeout=20)
        c = e.status.cancellation
        assert c and (c.reason, c.message, c.requested_by) == (api.StopReason.REQUESTED, said, manager), c
        assert said in (e.status.message or "")
    described = control_plane.kubectl("-n", run_namespace, "describe", "wfx", by_kubectl.id).stdout
    assert "Requested By:" in described and "kubectl-patch" in described and "wrong input" in described


async def test_cancel_reason_cannot_be_given_without_cancelling(
    control_plane: Any, client: KubestepClient, run_namespace: str
) -> None:
    h = await client.start("nobody-serves-this", None)
    out = control_plane.kubectl(
        "-n",
        run_namespace,
        "patch",
        "wfx",
        h.id,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"cancelReason": "why"}}),
        check=False,
    )
    assert out.returncode != 0 and "cancelReason can only be set together with cancelRequested" in out.stderr


# ----- 4. queue timeout ---------------------------------------------------------------------------


async def test_a_run_no_worker_claims_in_time_ends_with_queue_timeout(client: KubestepClient) -> None:
    h = await client.start("nobody-serves-this", None, queue_timeout_seconds=2)
    e = await until_phase(client, h.id, api.Phase.CANCELLED, timeout=15)
    assert e.status.reason == api.StopReason.QUEUE_TIMEOUT and e.status.cancellation
    assert e.status.cancellation.reason == api.StopReason.QUEUE_TIMEOUT
    waited = seconds_between(e.status.queued_at, e.status.finished_at)
    assert 2 - 0.2 <= waited <= 2 + SLACK, waited


@local_only
async def test_the_queue_timeout_counts_again_from_each_wake_up(client: KubestepClient, workers: Any) -> None:
    proc = workers()
    h = await client.start("wait-then-finish", {"seconds": 0.01, "wait_seconds": 4}, queue_timeout_seconds=2)
    await until_phase(client, h.id, api.Phase.WAITING, timeout=20)  # claimed in time, then waits 4 s
    assert proc is not None
    proc.stop()  # nobody left to claim it after the wake-up
    e = await until_phase(client, h.id, api.Phase.CANCELLED, timeout=25)
    assert e.status.reason == api.StopReason.QUEUE_TIMEOUT
    created = (await client.get_execution(h.id)).status.started_at
    since_wake = seconds_between(e.status.queued_at, e.status.finished_at)
    assert seconds_between(created, e.status.queued_at) >= 3.5, "the clock restarted at the wake-up"
    assert 2 - 0.2 <= since_wake <= 2 + SLACK, since_wake


# ----- 5. wait_for_event --------------------------------------------------------------------------


async def test_events_are_delivered_once_each_in_order_whenever_they_are_sent(
    control_plane: Any, client: KubestepClient, run_namespace: str, workers: Any
) -> None:
    workers()
    h = await client.start("approval", {"count": 3})
    early = await client.send_event(h.id, "approved", {"by": "alice"})  # before the wait is reached
    await client.send_event(h.id, "other-topic", {"ignored": True})
    e = await until(lambda: _waiting_on(client, h.id, "approval-1"), 20, "the second wait")
    assert e.status.events_consumed == [early]
    await client.send_event(h.id, "approved", {"by": "bob"})
    await until(lambda: _waiting_on(client, h.id, "approval-2"), 20, "the third wait")
    # From kubectl: a JSON patch appends to spec.events.
    control_plane.kubectl(
        "-n",
        run_namespace,
        "patch",
        "wfx",
        h.id,
        "--type=json",
        "-p",
        json.dumps(
            [
                {
                    "op": "add",
                    "path": "/spec/events/-",
                    "value": {"name": "from-kubectl", "topic": "approved", "data": {"by": "carol"}},
                }
            ]
        ),
    )
    e = await until_phase(client, h.id, api.Phase.COMPLETED, timeout=20)
    assert e.status.result["events"] == [{"by": "alice"}, {"by": "bob"}, {"by": "carol"}]
    steps = await steps_of(client, h.id)
    assert [steps[f"approval-{i}"].event for i in range(3)][2] == "from-kubectl"
    assert len(set(e.status.events_consumed)) == 3
    again = control_plane.kubectl(
        "-n",
        run_namespace,
        "patch",
        "wfx",
        h.id,
        "--type=json",
        "-p",
        json.dumps([{"op": "add", "path": "/spec/events/-", "value": {"name": "from-kubectl", "topic": "approved"}}]),
        check=False,
    )
    assert again.returncode != 0 and "Duplicate value" in again.stderr


async def _waiting_on(client: KubestepClient, name: str, key: str) -> Any:
    e = await client.get_execution(name)
    return e if e.status.phase == api.Phase.WAITING and (e.status.waiting_for or {}).get("key") == key else None


async def test_a_wait_for_event_frees_the_worker_times_out_and_can_be_cancelled(
    client: KubestepClient, workers: Any
) -> None:
    workers()
    timed = await client.start("approval", {"count": 1, "timeout": 2})
    cancelled = await client.start("approval", {"count": 1}, run_timeout_seconds=1)
    e = await until_phase(client, timed.id, api.Phase.FAILED, timeout=20)
    assert e.status.error and e.status.error["type"] == "EventTimeoutError"
    assert (await steps_of(client, timed.id))["approval-0"].timed_out
    e = await until_phase(client, cancelled.id, api.Phase.WAITING, timeout=20)
    assert e.status.worker is None and e.status.deadline is None  # freed; the budget does not run
    await asyncio.sleep(1.5)  # longer than its budget: waiting does not count
    assert (await client.get_execution(cancelled.id)).status.phase == api.Phase.WAITING
    await client.cancel_execution(cancelled.id)
    e = await until_phase(client, cancelled.id, api.Phase.CANCELLED, timeout=15)
    assert e.status.reason == api.StopReason.REQUESTED


@local_only
async def test_a_received_event_is_replayed_when_the_run_resumes_elsewhere(
    client: KubestepClient, workers: Any
) -> None:
    first = workers()
    h = await client.start("approval", {"count": 2})
    await client.send_event(h.id, "approved", {"n": 1})
    await until(lambda: _waiting_on(client, h.id, "approval-1"), 20, "the second wait")
    assert first is not None
    first.stop()
    await client.send_event(h.id, "approved", {"n": 2})
    await asyncio.sleep(0.5)
    assert (await client.get_execution(h.id)).status.phase == api.Phase.QUEUED  # re-queued: the event arrived
    workers()
    e = await until_phase(client, h.id, api.Phase.COMPLETED, timeout=20)
    assert e.status.result["events"] == [{"n": 1}, {"n": 2}]
    steps = await steps_of(client, h.id)
    assert steps["before"].output["token"] == e.status.result["tokens"][0]  # replayed, not run again
    assert steps["before"].output["worker"] == first.name
