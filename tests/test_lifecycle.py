"""The WorkflowExecution lifecycle on the real control plane: the issue's semantics a–j.

The operator runs as a process watching namespaces ``t-*`` (every test's fresh
namespace); workers are processes serving ``kubestep.examples``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

import kubestep
from kubestep import KubestepClient
from kubestep import _protocol as api

from .harness import (
    E2E,
    Proc,
    completed_steps,
    free_port,
    phase_of,
    scrape,
    start_worker,
    until,
    until_phase,
    wait_until,
)

local_only = pytest.mark.skipif(E2E, reason="starts/stops worker processes: local control plane only, not kind")


# ----- a, d: run timeouts ---------------------------------------------------------------------


async def test_a_timeout_ends_cancelled_at_first_boundary_after_deadline(client: KubestepClient, workers: Any) -> None:
    workers()
    h = await client.start("steps", {"count": 20, "seconds": 0.5}, run_timeout_seconds=2)
    e = await h.wait(timeout=30)
    assert e.status.phase == api.Phase.CANCELLED and e.status.reason == api.StopReason.RUN_TIMEOUT, e.status
    assert e.status.cancellation and e.status.cancellation.reason == api.StopReason.RUN_TIMEOUT
    deadline = e.status.cancellation.requested_at
    assert deadline is not None
    done = completed_steps(e)
    assert 4 <= len(done) <= 5, [s.key for s in done]
    # No step started after the deadline; the one in flight finished and was recorded.
    assert all(s.started_at is not None and s.started_at < deadline for s in done)
    assert all(s.state == "Completed" for s in e.status.steps)
    assert e.status.finished_at and (e.status.finished_at - deadline).total_seconds() < 1.0
    with pytest.raises(kubestep.ExecutionCancelledError) as info:
        await h.result(timeout=5)
    assert info.value.reason == api.StopReason.RUN_TIMEOUT


@local_only
async def test_the_operator_enforces_the_budget_when_the_worker_is_hung(client: KubestepClient, workers: Any) -> None:
    w = workers()
    h = await client.start("steps", {"count": 3, "seconds": 60}, run_timeout_seconds=1)
    # The operator signals the time-out while the worker is inside a 60 s step ...
    e = await until_phase(client, h.id, api.Phase.CANCELLING, timeout=20)
    assert e.status.reason == api.StopReason.RUN_TIMEOUT and e.status.worker == w.name
    w.signal(signal.SIGSTOP)  # ... then the worker hangs: no lease renewals, no step boundary.
    e = await h.wait(timeout=30)
    assert e.status.phase == api.Phase.CANCELLED and e.status.reason == api.StopReason.RUN_TIMEOUT
    assert e.status.cancellation and e.status.cancellation.acknowledged_by == "kubestep-operator"
    assert not completed_steps(e)


@local_only
async def test_a_run_whose_worker_is_lost_before_its_deadline_is_requeued_and_resumed(
    client: KubestepClient, workers: Any
) -> None:
    w = workers(name="doomed")
    h = await client.start("steps", {"count": 4, "seconds": 0.5})

    async def one_done() -> bool:
        return len(completed_steps(await h.status())) >= 1

    await until(one_done, what="a step")
    w.signal(signal.SIGKILL)
    e = await until_phase(client, h.id, api.Phase.QUEUED, timeout=20)
    # The operator re-queued it (WorkerLost) and may already say no worker is left (NoWorker).
    assert e.status.reason in ("WorkerLost", "NoWorker") and e.status.worker is None
    workers(name="rescuer")
    await h.result(timeout=30)
    e = await h.status()
    assert e.status.attempt == 2
    assert {s.output["worker"] for s in e.status.steps} == {"doomed", "rescuer"}


@local_only
async def test_a_run_requeued_mid_segment_keeps_what_is_left_of_its_budget(
    client: KubestepClient, workers: Any
) -> None:
    # Losing a worker is not a wait: the segment goes on, so the next holder gets what was left of
    # the budget, not a fresh runTimeoutSeconds (a run that kills its workers cannot run forever).
    w = workers(name="doomed")
    h = await client.start("steps", {"count": 60, "seconds": 0.5}, run_timeout_seconds=8)

    async def two_done() -> bool:
        return len(completed_steps(await h.status())) >= 2

    await until(two_done, what="two steps")
    w.signal(signal.SIGKILL)
    await until_phase(client, h.id, api.Phase.QUEUED, timeout=20)
    left = float((await client._get_object(h.id))["status"]["budgetRemainingSeconds"])
    assert 0 < left < 8 - 1, left  # at least a second of running and the lease's wait are spent
    workers(name="rescuer")
    e = await until_phase(client, h.id, api.Phase.CANCELLED, timeout=30)
    assert e.status.cancellation and e.status.cancellation.reason == api.StopReason.RUN_TIMEOUT
    history = await client.step_history(h.id)
    rescued = [s for s in history if s.state == "Completed" and s.output["worker"] == "rescuer"]
    # The rescuer's segment lasted what was left (a fresh budget would have allowed 16 steps).
    assert 1 <= len(rescued) <= left / 0.5 + 1, (len(rescued), left)


# ----- b, c: waiting does not count; the budget resets --------------------------------------


async def test_time_spent_waiting_does_not_count_against_the_budget(client: KubestepClient, workers: Any) -> None:
    workers()
    h = await client.start("wait-then-finish", {"seconds": 1, "wait_seconds": 3}, run_timeout_seconds=2)
    assert await h.result(timeout=30) == "done"
    e = await h.status()
    assert [s.key for s in e.status.steps] == ["before", "pause", "after"]
    assert e.status.attempt == 2


@local_only
async def test_the_budget_resets_after_each_wait_and_queue_time_does_not_count(
    client: KubestepClient, workers: Any
) -> None:
    # 3.6 s of running in two 1.8 s segments, each under the 2 s budget ...
    h = await client.start(
        "steps", {"count": 6, "seconds": 0.6, "wait_after": 2, "wait_seconds": 0.5}, run_timeout_seconds=2
    )
    # ... and 3 s queued before any worker exists.
    await asyncio.sleep(3)
    assert await phase_of(client, h.id) == api.Phase.QUEUED
    workers()
    result = await h.result(timeout=30)
    assert result["steps"] == 6


# ----- e: cancel while running ---------------------------------------------------------------


async def test_a_cancel_lets_the_step_in_flight_finish_and_starts_no_other(
    client: KubestepClient, workers: Any
) -> None:
    workers()
    h = await client.start("until-cancelled", {"seconds": 0.4})

    async def two_done() -> bool:
        return len(completed_steps(await h.status())) >= 2

    await until(two_done, what="two steps")
    # Into the next 0.4 s step, not the few ms between two (a cancel landing there finds no step in
    # flight, which the last assertion below would take for one that finished before the cancel).
    await asyncio.sleep(0.15)
    assert await h.cancel(client) is True
    e = await h.wait(timeout=15)
    assert e.status.phase == api.Phase.CANCELLED and e.status.reason == api.StopReason.REQUESTED
    assert e.status.cancellation and e.status.cancellation.acknowledged_by  # the worker acknowledged
    requested = e.status.cancellation.requested_at
    assert requested is not None
    assert all(s.state == "Completed" and s.output for s in e.status.steps)
    # The step in flight completed (its output is recorded); nothing started after the signal.
    assert e.status.steps[-1].finished_at and e.status.steps[-1].finished_at >= requested
    assert sum(1 for s in e.status.steps if s.started_at and s.started_at > requested) == 0


async def test_a_workflow_cannot_swallow_its_cancellation(client: KubestepClient, workers: Any) -> None:
    workers()
    h = await client.start("swallow")
    await until_phase(client, h.id, api.Phase.RUNNING)
    await asyncio.sleep(0.3)
    assert await client.cancel_execution(h.id) is True
    e = await h.wait(timeout=15)
    assert e.status.phase == api.Phase.CANCELLED and e.status.reason == api.StopReason.REQUESTED


# ----- f, g: cancel queued / waiting / finished / unknown ------------------------------------


async def test_a_queued_run_with_no_worker_is_cancelled_at_once(client: KubestepClient) -> None:
    h = await client.start("nobody-serves-this", {"x": 1})
    e = await until_phase(client, h.id, api.Phase.QUEUED)
    cond = {c.type: c for c in e.status.conditions}[api.ConditionType.SCHEDULED]
    assert cond.status == "False" and cond.reason == "NoWorker", cond
    assert "nobody-serves-this" in (cond.message or "")
    assert await client.cancel_execution(h.id) is True
    e = await h.wait(timeout=10)
    assert e.status.phase == api.Phase.CANCELLED and e.status.reason == api.StopReason.REQUESTED and not e.status.steps


async def test_a_waiting_run_is_cancelled_at_once(client: KubestepClient, workers: Any) -> None:
    workers()
    h = await client.start("steps", {"count": 2, "seconds": 0.01, "wait_after": 0, "wait_seconds": 3600})
    await until_phase(client, h.id, api.Phase.WAITING, timeout=20)
    assert await h.cancel(client) is True
    e = await h.wait(timeout=5)  # not an hour
    assert e.status.phase == api.Phase.CANCELLED and [s.key for s in completed_steps(e)] == ["step-0"]


async def test_a_cancel_of_a_finished_run_changes_nothing(
    client: KubestepClient, workers: Any, control_plane: Any, run_namespace: str
) -> None:
    workers()
    done = await client.start("steps", {"count": 1, "seconds": 0.01})
    await done.result(timeout=20)
    failed = await client.start("fails")
    with pytest.raises(kubestep.ExecutionFailedError):
        await failed.result(timeout=20)
    for h in (done, failed):
        before = (await h.status()).status
        assert await h.cancel(client) is False
        # kubectl can still set the flag; the operator ignores it and says so in an Event.
        control_plane.kubectl(
            "-n", run_namespace, "patch", "wfx", h.id, "--type=merge", "-p", '{"spec":{"cancelRequested":true}}'
        )

        async def ignored(name: str = h.id) -> bool:
            out = control_plane.kubectl(
                "-n",
                run_namespace,
                "get",
                "events",
                "-o",
                "json",
                "--field-selector",
                f"involvedObject.name={name},reason=CancelIgnored",
            ).stdout
            return bool(json.loads(out)["items"])

        await until(ignored, 15, "a CancelIgnored event")
        assert (await h.status()).status == before
    assert await client.cancel_execution("no-such-run") is False


async def test_a_cancel_while_a_wait_unwinds_still_ends_the_run(client: KubestepClient, workers: Any) -> None:
    # The workflow's finally block awaits while wait_for unwinds it: the cancel lands then.
    workers()
    h = await client.start("wait-with-cleanup", {"wait_seconds": 30, "cleanup_seconds": 2})

    async def first_step_recorded() -> bool:
        return len(completed_steps(await h.status())) == 1

    await until(first_step_recorded, 20, "the first step's record")
    assert await h.cancel(client) is True
    e = await until_phase(client, h.id, api.Phase.CANCELLED, timeout=15)
    assert e.status.reason == api.StopReason.REQUESTED, e.status
    assert [s.key for s in completed_steps(e)] == ["before"]


async def test_a_result_too_large_for_the_object_fails_with_a_clear_reason(
    client: KubestepClient, workers: Any
) -> None:
    workers()
    h = await client.start("big-result", {"bytes": 2_000_000})
    with pytest.raises(kubestep.ExecutionFailedError) as info:
        await h.result(timeout=30)
    e = await h.status()
    assert e.status.reason == "WorkerError", e.status
    assert e.status.error and "too large" in e.status.error["message"].lower(), e.status.error
    assert info.value.error is not None
    # Failed once, not re-queued and retried: the run was claimed once.
    assert e.status.attempt == 1


async def test_steps_whose_outputs_together_outgrow_an_object_complete_and_keep_their_history(
    client: KubestepClient, workers: Any
) -> None:
    """Status keeps a few records by count and by bytes; a step output of up to about 1 MiB is
    stored (docs/design.md, "Limits"); one over it fails the run with the ConfigMap's limit named."""
    workers()
    h = await client.start("big-outputs", {"count": 4, "bytes": 600_000})
    assert await h.result(timeout=60) == 4
    history = await client.step_history(h.id)
    assert [s.key for s in history] == [f"out-{i}" for i in range(4)]
    assert all(s.output == "x" * 600_000 for s in history)
    too_big = await client.start("big-outputs", {"count": 1, "bytes": 1_200_000})
    with pytest.raises(kubestep.ExecutionFailedError):
        await too_big.result(timeout=30)
    e = await too_big.status()
    assert e.status.reason == "WorkerError" and e.status.error, e.status
    assert "1048576 bytes" in e.status.error["message"], e.status.error
    # The step did complete, and its record was made durable (a StepBatch holds up to ~1.5 MiB):
    # it is the end of the run's history, though status could not take it.
    assert [s.key for s in await client.step_history(too_big.id)] == ["out-0"]


# ----- h: kubectl patch, kubectl apply and the SDK all cancel --------------------------------


async def test_kubectl_the_sdk_and_the_cli_all_cancel(
    client: KubestepClient, workers: Any, control_plane: Any, run_namespace: str
) -> None:
    workers()
    via_patch = await client.start("until-cancelled", {"seconds": 0.05})
    via_sdk = await client.start("until-cancelled", {"seconds": 0.05})
    name = f"applied-{uuid.uuid4().hex[:5]}"
    manifest = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name},
        "spec": {"workflow": "until-cancelled", "input": {"seconds": 0.05}},
    }
    control_plane.kubectl("-n", run_namespace, "apply", "-f", "-", input=json.dumps(manifest))
    for n in (via_patch.id, via_sdk.id, name):
        await until_phase(client, n, api.Phase.RUNNING)

    control_plane.kubectl(
        "-n", run_namespace, "patch", "wfx", via_patch.id, "--type", "merge", "-p", '{"spec":{"cancelRequested":true}}'
    )
    assert await client.cancel_execution(via_sdk.id) is True
    manifest["spec"]["cancelRequested"] = True  # type: ignore[index]
    control_plane.kubectl("-n", run_namespace, "apply", "-f", "-", input=json.dumps(manifest))

    for n in (via_patch.id, via_sdk.id, name):
        e = await client.wait(n, timeout=15)
        assert e.status.phase == api.Phase.CANCELLED and e.status.reason == api.StopReason.REQUESTED, (n, e.status)
    # kubectl wait works on the Finished condition.
    control_plane.kubectl("-n", run_namespace, "wait", "--for=condition=Finished", f"wfx/{name}", "--timeout=10s")
    # The Events tell the story: a cancel that took effect is never reported as ignored.
    # (A CancelIgnored Event follows its run's terminal event within milliseconds; allow a second.)
    await asyncio.sleep(1)
    reasons = {
        (ev["involvedObject"]["name"], ev["reason"])
        for ev in json.loads(control_plane.kubectl("-n", run_namespace, "get", "events", "-o", "json").stdout)["items"]
    }
    for n in (via_patch.id, via_sdk.id, name):
        assert (n, api.Phase.CANCELLED) in reasons and (n, "CancelIgnored") not in reasons, sorted(reasons)


# ----- i: validation, unserved workflows, failures --------------------------------------------


async def test_the_apiserver_rejects_bad_specs(client: KubestepClient) -> None:
    with pytest.raises(kubestep.InvalidError, match="runTimeoutSeconds"):
        await client.start("steps", run_timeout_seconds=0)
    with pytest.raises(kubestep.InvalidError, match="workflow"):
        await client._kube.create(
            api.execution_path(client.namespace),
            {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND,
                "metadata": {"generateName": "bad-"},
                "spec": {"input": 1},
            },
        )
    h = await client.start("nobody-serves-this")
    await client.cancel_execution(h.id)
    with pytest.raises(kubestep.InvalidError, match="cannot be set back to false"):
        await client._kube.merge_patch(api.execution_path(client.namespace, h.id), {"spec": {"cancelRequested": False}})


async def test_a_failing_workflow_records_its_error(client: KubestepClient, workers: Any) -> None:
    workers()
    h = await client.start("fails", {"message": "bad input 42"})
    with pytest.raises(kubestep.ExecutionFailedError) as info:
        await h.result(timeout=20)
    assert info.value.error["type"] == "ValueError" and info.value.error["message"] == "bad input 42"
    e = await h.status()
    assert e.status.reason == "WorkflowError" and e.status.error and e.status.error["step"] == "boom"
    assert [(s.key, s.state) for s in e.status.steps] == [("ok", "Completed"), ("boom", "Failed")]


# ----- j: durability ------------------------------------------------------------------------


@local_only
async def test_a_wait_releases_the_worker_and_another_resumes_by_replay(client: KubestepClient, workers: Any) -> None:
    first = workers(name="first")
    h = await client.start("steps", {"count": 2, "seconds": 0.01, "wait_after": 0, "wait_seconds": 2})
    e = await until_phase(client, h.id, api.Phase.WAITING)
    assert e.status.worker is None
    first.stop()
    workers(name="second")
    result = await h.result(timeout=30)
    e = await h.status()
    outputs = [s.output for s in e.status.steps if s.kind == "Run"]
    assert [o["worker"] for o in outputs] == ["first", "second"]
    assert result["tokens"] == [o["token"] for o in outputs]  # step-0 replayed, not re-run
    assert e.status.attempt == 2


@local_only
async def test_sigterm_hands_runs_back_and_no_step_runs_twice(client: KubestepClient, workers: Any) -> None:
    first = workers(name="first")
    h = await client.start("steps", {"count": 6, "seconds": 0.4})

    async def two_done() -> bool:
        return len(completed_steps(await h.status())) >= 2

    await until(two_done, what="two steps")
    assert first.stop() == 0
    e = await h.status()
    # Handed back; the operator may already say that no worker is left to take it.
    assert e.status.phase == api.Phase.QUEUED and e.status.reason in ("HandedBack", "NoWorker"), e.status
    assert e.status.worker is None and all(s.state == "Completed" for s in e.status.steps)
    handed_back = {s.key: s.output["token"] for s in completed_steps(e)}
    workers(name="second")
    result = await h.result(timeout=30)
    e = await h.status()
    assert len(set(result["tokens"])) == 6
    for s in completed_steps(e):
        if s.key in handed_back:
            assert s.output["token"] == handed_back[s.key] and s.output["worker"] == "first"
    assert any(s.output["worker"] == "second" for s in completed_steps(e))


@local_only
async def test_a_worker_restarted_under_its_pod_name_resumes_what_it_held(client: KubestepClient, workers: Any) -> None:
    # A long lease: the operator will not call the worker lost, so only the restarted
    # worker's own recovery (a run listed as held by its name) can get the run going again.
    w = workers(name="phoenix", lease_seconds=60)
    h = await client.start("steps", {"count": 4, "seconds": 0.5})

    async def two_done() -> bool:
        return len(completed_steps(await h.status())) >= 2

    await until(two_done, what="two steps")
    w.signal(signal.SIGKILL)
    before = {s.key: s.output["token"] for s in completed_steps(await h.status())}
    workers(name="phoenix", lease_seconds=60)
    await h.result(timeout=20)
    e = await h.status()
    assert e.status.attempt == 2, e.status
    for s in completed_steps(e):
        if s.key in before:
            assert s.output["token"] == before[s.key]  # replayed, not run again


@local_only
async def test_a_long_history_is_archived_and_replayed_from_the_journal(
    client: KubestepClient, workers: Any, control_plane: Any, run_namespace: str
) -> None:
    # A status window of 4 records: the rest of the history moves to journal ConfigMaps.
    small = {"KUBESTEP_STATUS_STEPS": "4"}
    first = workers(name="archivist", env=small)
    h = await client.start("steps", {"count": 12, "seconds": 0.01, "wait_after": 5, "wait_seconds": 1})
    e = await until_phase(client, h.id, api.Phase.WAITING, timeout=20)
    assert e.status.journal and len(e.status.steps) <= 4, e.status
    before = {s.key: s.output["token"] for s in await h.steps() if s.kind == "Run"}
    assert sorted(before) == [f"step-{i}" for i in range(6)]
    first.stop()
    workers(name="successor", env=small)
    result = await h.result(timeout=30)

    e = await h.status()
    history = await h.steps()
    assert [s.key for s in history] == [f"step-{i}" for i in range(6)] + ["wait-5"] + [
        f"step-{i}" for i in range(6, 12)
    ]
    assert all(s.state == "Completed" for s in history) and e.status.steps_completed == 13
    assert len(e.status.steps) <= 4 and sum(j.steps for j in e.status.journal) + len(e.status.steps) == 13
    # Replayed from the journal, not run again: the same tokens, the first worker's.
    for s in history[:6]:
        assert s.output["token"] == before[s.key] and s.output["worker"] == "archivist"
    assert {s.output["worker"] for s in history[7:]} == {"successor"}
    assert result["tokens"] == [s.output["token"] for s in history if s.kind == "Run"]

    # The journal is owned by the execution: the garbage collector deletes it with it.
    names = [j.config_map for j in e.status.journal]
    cm = json.loads(control_plane.kubectl("-n", run_namespace, "get", "configmap", names[0], "-o", "json").stdout)
    assert cm["immutable"] is True and cm["metadata"]["ownerReferences"][0]["name"] == h.id
    control_plane.kubectl("-n", run_namespace, "delete", "wfx", h.id)

    async def collected() -> bool:
        out = control_plane.kubectl("-n", run_namespace, "get", "configmaps", "-o", "name").stdout
        return not any(f"configmap/{n}" in out.split() for n in names)

    await until(collected, 30, "the journal ConfigMaps to be garbage-collected")


@local_only
async def test_a_long_journal_stays_short_in_status_by_merging_chunks(client: KubestepClient, workers: Any) -> None:
    """A window of 2 records archives one record per chunk; every 16 chunks of a level are merged into
    one of the next, so status.journal stays short, and replay and the history still see every step.
    With every step a status write (the step journal archives once per checkpoint, in few big chunks)."""
    per_step = {"KUBESTEP_STATUS_STEPS": "2", "KUBESTEP_STEP_STORE": "status"}
    first = workers(name="merger", env=per_step)
    h = await client.start("steps", {"count": 40, "seconds": 0.005, "wait_after": 35, "wait_seconds": 1})
    await until_phase(client, h.id, api.Phase.WAITING, timeout=60)
    assert first is not None
    first.stop()
    workers(name="heir", env=per_step)
    result = await h.result(timeout=60)
    e = await h.status()
    levels = [j.level for j in e.status.journal]
    assert 1 in levels and len(e.status.journal) < 16, levels
    history = await h.steps()
    assert [s.key for s in history] == [f"step-{i}" for i in range(36)] + ["wait-35"] + [
        f"step-{i}" for i in range(36, 40)
    ]
    assert {s.output["worker"] for s in history[:36]} == {"merger"}  # replayed, not run again
    assert result["tokens"] == [s.output["token"] for s in history if s.kind == "Run"]


@local_only
async def test_a_journal_the_worker_cannot_write_fails_the_run_as_a_worker_error(
    client: KubestepClient, workers: Any, control_plane: Any, run_namespace: str
) -> None:
    # No ConfigMaps allowed in the namespace: archiving step records is refused (403).
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-configmaps"},
        "spec": {"hard": {"configmaps": "0"}},
    }
    control_plane.kubectl("-n", run_namespace, "apply", "-f", "-", input=json.dumps(quota))
    # Admission enforces a quota once the controller manager has computed its usage.
    wait_until(
        lambda: (
            control_plane.kubectl(
                "-n", run_namespace, "get", "resourcequota", "no-configmaps", "-o", "jsonpath={.status.hard.configmaps}"
            ).stdout
            == "0"
        ),
        20,
        what="the quota to be in force",
    )
    workers(env={"KUBESTEP_STATUS_STEPS": "2"})
    h = await client.start("steps", {"count": 5, "seconds": 0.01})
    e = await h.wait(timeout=30)
    # Not the workflow's failure (workflow code never saw the error), and not retried for ever.
    assert e.status.phase == api.Phase.FAILED and e.status.reason == "WorkerError", e.status
    assert e.status.error and "quota" in e.status.error["message"], e.status.error
    assert e.status.attempt == 1


@local_only
async def test_two_workers_never_both_execute_a_run(client: KubestepClient, workers: Any) -> None:
    workers(name="a")
    workers(name="b")
    handles = [await client.start("steps", {"count": 3, "seconds": 0.05}) for _ in range(16)]
    for h in handles:
        await h.result(timeout=60)
    seen_workers = set()
    for h in handles:
        e = await h.status()
        runners = {s.output["worker"] for s in e.status.steps}
        assert len(runners) == 1 and e.status.attempt == 1, (h.id, runners, e.status.attempt)
        seen_workers |= runners
    assert seen_workers <= {"a", "b"}


@local_only
async def test_worker_alone_enforces_the_budget_on_its_own_clock(control_plane: Any, logs: Path, operator: Any) -> None:
    """Outside the operator's namespaces: the worker stops the run at the boundary by itself."""
    ns = f"solo-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", ns)
    proc = start_worker(control_plane.kubeconfig, logs, ns)
    try:
        async with KubestepClient(namespace=ns, kubeconfig=str(control_plane.kubeconfig)) as c:
            h = await c.start("steps", {"count": 20, "seconds": 0.5}, run_timeout_seconds=1)
            # No operator here: queue it by hand, as the operator would.
            await c._kube.merge_patch(api.execution_path(ns, h.id, "status"), {"status": {"phase": api.Phase.QUEUED}})
            e = await h.wait(timeout=20)
            assert e.status.phase == api.Phase.CANCELLED and e.status.reason == api.StopReason.RUN_TIMEOUT
            assert e.status.cancellation and e.status.cancellation.acknowledged_by == proc.name
            assert 2 <= len(completed_steps(e)) <= 3
    finally:
        proc.stop()
        control_plane.kubectl("delete", "namespace", ns, "--wait=false")


def test_printer_columns_tell_the_story(control_plane: Any, run_namespace: str, workers: Any) -> None:
    workers()
    name = f"cols-{uuid.uuid4().hex[:5]}"
    manifest = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name},
        "spec": {"workflow": "steps", "input": {"count": 2, "seconds": 0.01}},
    }
    control_plane.kubectl("-n", run_namespace, "apply", "-f", "-", input=json.dumps(manifest))
    control_plane.kubectl("-n", run_namespace, "wait", "--for=condition=Finished", f"wfx/{name}", "--timeout=20s")
    out = control_plane.kubectl("-n", run_namespace, "get", "wfx", name).stdout
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "WORKFLOW", "PHASE", "REASON", "STEPS", "STEP", "WORKER", "PARENT", "AGE"]
    assert row.split()[:6] == [name, "steps", "Completed", "Succeeded", "2", "step-1"]
    events = control_plane.kubectl("-n", run_namespace, "describe", "wfx", name).stdout
    for reason in ("Queued", "Started", "Completed"):
        assert reason in events, events


# ----- metrics -------------------------------------------------------------------------------


@local_only
async def test_worker_and_operator_metrics_count_what_happened(
    client: KubestepClient, workers: Any, operator: Proc | None
) -> None:
    assert operator is not None
    op_port = int(operator.env["KUBESTEP_METRICS_PORT"])
    queued = ("kubestep_operator_transitions_total", (("phase", "Queued"), ("reason", "Pending")))
    queued_before = scrape(op_port).get(queued, 0)  # the operator is shared by the whole session
    port = free_port()
    workers(env={"KUBESTEP_METRICS_PORT": str(port)})
    done = await client.start("steps", {"count": 3, "seconds": 0.01})
    await done.result(timeout=20)
    cancelled = await client.start("until-cancelled", {"seconds": 0.05})
    await until_phase(client, cancelled.id, api.Phase.RUNNING)
    assert await cancelled.cancel(client) is True
    await cancelled.wait(timeout=15)

    # The counters move after the final write's answer, which the client may see first.
    cancelled = ("kubestep_worker_runs_ended_total", (("outcome", "Cancelled"), ("workflow", "until-cancelled")))

    async def counted() -> dict[Any, float] | None:
        m = scrape(port)
        return m if m.get(cancelled) == 1 else None

    m = await until(counted, 10, "the worker's metrics to count the cancel")
    assert m[("kubestep_worker_steps_total", (("state", "Completed"), ("workflow", "steps")))] == 3
    assert m[("kubestep_worker_runs_ended_total", (("outcome", "Completed"), ("workflow", "steps")))] == 1
    assert m[("kubestep_worker_runs_active", (("workflow", "steps"),))] == 0
    assert m[("kubestep_worker_runs_active", (("workflow", "until-cancelled"),))] == 0
    # Claims that lost a race are timed too.
    assert m[("kubestep_worker_status_write_seconds_count", (("kind", "claim"),))] >= 2
    assert m[("kubestep_worker_step_seconds_count", (("workflow", "steps"),))] == 3

    op = scrape(op_port)
    # Both runs were queued by the operator (the cancel's Cancelling write may or may
    # not have beaten the worker, which acts on the flag itself).
    assert op[queued] - queued_before >= 2
    assert ("kubestep_operator_scheduled", ()) in op and ("kubestep_operator_unfinished_runs", ()) in op


# ----- the kubelet's probes ------------------------------------------------------------------


@local_only
async def test_a_worker_is_ready_while_it_claims_runs_and_not_while_it_drains(
    client: KubestepClient, workers: Any
) -> None:
    port = free_port()
    w = workers(env={"KUBESTEP_HEALTH_PORT": str(port)})
    assert w is not None

    async def probe(path: str) -> tuple[int, str]:
        async with httpx.AsyncClient(timeout=5) as http:
            r = await http.get(f"http://127.0.0.1:{port}{path}")
            return r.status_code, r.text

    async def readiness_is(code: int) -> tuple[int, str] | None:
        got = await probe("/readyz")
        return got if got[0] == code else None

    assert await until(lambda: readiness_is(200), 10, "/readyz to pass") == (200, "ok\n")
    assert await probe("/healthz") == (200, "ok\n")
    h = await client.start("steps", {"count": 3, "seconds": 3})
    await until_phase(client, h.id, api.Phase.RUNNING)
    w.signal(signal.SIGTERM)  # it finishes the 3 s step in flight, then hands the run back
    _, text = await until(lambda: readiness_is(503), 5, "/readyz to fail")
    assert "stopping" in text
    assert await probe("/healthz") == (200, "ok\n")  # draining is not dead: no restart
    assert await asyncio.to_thread(w.popen.wait, 30) == 0
    e = await until_phase(client, h.id, api.Phase.QUEUED)
    assert len(completed_steps(e)) == 1
