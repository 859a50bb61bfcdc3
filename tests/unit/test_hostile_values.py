"""Issue 17: the worst values a tenant or a worker can write, against the pure rules and the operator's
stores. No cluster: ``tests/security/`` does the same through the real apiserver and real tokens."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
from typing import Any, cast

import pytest

from kubestep import _protocol as api
from kubestep._kube import Kube
from kubestep._settings import WorkerSettings
from kubestep._worker.leasing import collisions, previous_life
from kubestep_operator import measuring
from kubestep_operator.controller import Controller, liveness_of
from kubestep_operator.electing import Observed, Timing, takeover
from kubestep_operator.keys import LeaseKey, RunKey
from kubestep_operator.reconciling import Snapshot, Urgency, decide
from kubestep_operator.watching import Scope

HUGE = 2**63 - 1
NOW = dt.datetime(2026, 12, 2, 12, 0, 0, tzinfo=dt.UTC)


def controller() -> Controller:
    offline = cast(Kube, object())
    return Controller(
        kube=offline, watch=offline, scopes=[Scope(None)], lease_grace=api.now() + dt.timedelta(seconds=15)
    )


def run(
    name: str, *, spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None, **meta: Any
) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {
            "namespace": "ns",
            "name": name,
            "uid": f"u-{name}",
            "resourceVersion": "1",
            "generation": 1,
            **meta,
        },
        "spec": {"workflow": "wf", **(spec or {})},
        "status": status or {},
    }


def lease(name: str, holder: str, renew: str, duration: Any = 15) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": name, "annotations": {api.ANNOTATION_WORKFLOWS: "wf"}},
        "spec": {"holderIdentity": holder, "renewTime": renew, "leaseDurationSeconds": duration},
    }


# ----- time arithmetic never raises ---------------------------------------------------------------


@pytest.mark.parametrize("by", [HUGE, float(HUGE), 1e308, float("inf"), float("nan"), -HUGE, 0])
def test_later_clamps_instead_of_overflowing(by: float) -> None:
    t = api.later(NOW, by)
    assert api.parse_time(api.fmt_time(t)) == t  # and the result can be written back
    assert NOW - dt.timedelta(seconds=api.MAX_SECONDS + 1) <= t <= api.END_OF_TIME


def test_later_near_the_end_of_the_calendar() -> None:
    assert api.later(dt.datetime(9999, 12, 31, tzinfo=dt.UTC), 10**6) == api.END_OF_TIME


def test_a_queued_run_with_the_largest_queue_timeout_is_decided() -> None:
    body = run(
        "r", spec={"queueTimeoutSeconds": HUGE}, status={"phase": api.Phase.QUEUED, "queuedAt": api.fmt_time(NOW)}
    )
    d = decide(Snapshot.from_body(body), NOW, lambda ns, w: None, frozenset({"wf"}), NOW)
    assert d.patch is not None or d.next_due is not None  # no OverflowError


def test_a_claim_of_a_run_with_the_largest_budget_is_written_with_a_clamped_deadline() -> None:
    patch = api.claimed(
        {"workflow": "wf", "runTimeoutSeconds": HUGE}, {"phase": "Queued"}, worker="w", attempt=1, at=NOW, generation=1
    )
    deadline = api.parse_time(patch["deadline"])
    assert deadline is not None and deadline <= api.later(NOW, api.MAX_SECONDS)
    assert api.segment_budget({"runTimeoutSeconds": HUGE}, {}) == api.MAX_SECONDS


def test_a_cancel_dated_in_the_year_9999_counts_as_now() -> None:
    meta = {
        "managedFields": [
            {"manager": "x", "time": "9999-12-31T23:59:59Z", "fieldsV1": {"f:spec": {"f:cancelRequested": {}}}}
        ]
    }
    t = api.cancel_time(meta)
    assert t is not None and t <= api.now()
    body = run("r", spec={"cancelRequested": True}, status={"phase": api.Phase.RUNNING, "worker": "w"}, **meta)
    s = Snapshot.from_body(body)
    live = api.later(api.now(), 15)
    d = decide(s, api.now(), lambda ns, w: None, None, live)  # no OverflowError through HEAD_START
    assert d.next_due is not None and d.next_due <= api.later(api.now(), 3)


def test_a_malformed_managed_fields_time_is_ignored() -> None:
    meta = {
        "managedFields": [{"manager": "x", "time": "not a time", "fieldsV1": {"f:spec": {"f:cancelRequested": {}}}}]
    }
    assert api.cancel_time(meta) is None


# ----- worker Leases ------------------------------------------------------------------------------


def test_only_the_lease_named_after_its_holder_counts() -> None:
    assert liveness_of(lease("kubestep-worker-w1", "w1", api.fmt_time(NOW)), NOW) is not None
    assert liveness_of(lease("decoy", "w1", api.fmt_time(NOW)), NOW) is None
    assert liveness_of(lease("kubestep-worker-w2", "w1", api.fmt_time(NOW)), NOW) is None


@pytest.mark.parametrize(
    "renew,duration", [("9999-12-31T23:59:59.999999Z", 15), (None, 2**31 - 1), ("9999-12-31T23:59:59Z", HUGE)]
)
def test_a_lease_never_counts_for_longer_than_its_capped_term_from_now(renew: str | None, duration: int) -> None:
    found = liveness_of(lease("kubestep-worker-w1", "w1", renew or api.fmt_time(NOW), duration), NOW)
    assert found is not None
    assert found[1].expires <= NOW + dt.timedelta(seconds=api.MAX_LEASE_SECONDS)


def test_a_malformed_lease_is_ignored() -> None:
    assert liveness_of(lease("kubestep-worker-w1", "w1", "yesterday"), NOW) is None
    assert (
        liveness_of(
            {"metadata": {"namespace": "ns", "name": "kubestep-worker-w1"}, "spec": {"holderIdentity": ["w1"]}}, NOW
        )
        is None
    )


def test_a_deleted_lease_keeps_its_holder_alive_until_its_last_renewal_runs_out() -> None:
    # A deleted Lease once re-queued its holder's run at once, and the step ran on two workers.
    c = controller()
    now = api.now()
    held = lease("kubestep-worker-w1", "w1", api.fmt_time(now))
    c.on_lease("ADDED", held)
    c.on_execution("ADDED", run("r", status={"phase": api.Phase.RUNNING, "worker": "w1"}))
    c.on_lease("DELETED", held)
    assert len(c.backlog) == 0  # nothing to write: the holder counts as alive
    assert c.live_workflows("ns", now) == frozenset()  # but serves no queued run
    c.fire(LeaseKey("ns", "w1"))  # its scheduled expiry is not yet due: still alive
    assert LeaseKey("ns", "w1") in c.workers and len(c.backlog) == 0
    c.lease_grace = now - dt.timedelta(seconds=1)
    c.workers[LeaseKey("ns", "w1")] = c.workers[LeaseKey("ns", "w1")].__class__(
        now - dt.timedelta(seconds=1), frozenset(), True
    )
    c.fire(LeaseKey("ns", "w1"))  # once it ran out: the run is lost and re-queued
    assert c.backlog.count(Urgency.PROGRESS) == 1


# ----- one object's failure stays with that object --------------------------------------------------


def test_a_run_that_cannot_be_read_or_decided_is_told_and_the_others_go_on() -> None:
    c = controller()
    before = measuring.OBJECT_ERRORS.labels("read")._value.get()
    bad = run("bad", status={"phase": api.Phase.RUNNING, "worker": "w", "deadline": "not a time"})
    c.on_execution("ADDED", bad)
    c.on_execution("ADDED", run("good"))
    assert RunKey("ns", "good") in c.executions and c.backlog.count(Urgency.ADMIT) == 1
    assert RunKey("ns", "bad") not in c.executions
    assert measuring.OBJECT_ERRORS.labels("read")._value.get() == before + 1
    assert len(c.recorder) == 1  # a Warning Event on the bad run
    c.on_execution("MODIFIED", bad)  # the same generation again: told once
    assert len(c.recorder) == 1


def test_a_decision_that_raises_is_retried_for_that_run_only(monkeypatch: pytest.MonkeyPatch) -> None:
    c = controller()
    real = c.decide

    def decide_or_fail(s: Snapshot, now: dt.datetime) -> Any:
        if s.name == "bad":
            raise OverflowError("date value out of range")
        return real(s, now)

    monkeypatch.setattr(c, "decide", decide_or_fail)
    c.on_execution("ADDED", run("bad"))
    c.on_execution("ADDED", run("good"))
    assert c.backlog.count(Urgency.ADMIT) == 1
    assert c.failures[RunKey("ns", "bad")] == 1 and c.scheduler.due(RunKey("ns", "bad")) is not None
    c.fire(RunKey("ns", "bad"))  # the retry fails again: backoff grows, one Event in all
    assert c.failures[RunKey("ns", "bad")] == 2 and len(c.recorder) == 1


async def test_a_loop_that_ended_is_reported_dead() -> None:
    c = controller()

    async def broken() -> None:
        raise OverflowError("date value out of range")

    c._spawn(broken(), "informer of runs")
    c._spawn(asyncio.sleep(60), "scheduler")
    await asyncio.sleep(0.01)
    assert [d.split(":")[0] for d in c.dead()] == ["informer of runs"]
    for t in c.tasks:
        t.cancel()
    await asyncio.gather(*c.tasks, return_exceptions=True)


# ----- the operator's own leader Lease ----------------------------------------------------------------


def test_the_elector_honours_no_longer_lease_than_its_own() -> None:
    timing = Timing(lease_seconds=15, renew_deadline=10, retry_period=2)
    evil = {"holderIdentity": "evil", "leaseDurationSeconds": 2147483647, "renewTime": "2026-12-02T12:00:00.000000Z"}
    seen = Observed()
    assert takeover(evil, "a", NOW, 100.0, seen, timing) is None
    assert takeover(evil, "a", NOW, 114.0, seen, timing) is None
    assert takeover(evil, "a", NOW, 115.0, seen, timing) is not None  # not in 68 years


# ----- who cancelled ----------------------------------------------------------------------------------


def test_the_canceller_annotation_counts_only_where_the_audit_policies_vouch_for_it() -> None:
    meta = {
        "annotations": {api.ANNOTATION_CANCELLED_BY: "system:admin"},
        "managedFields": [
            {
                "manager": "kubectl-patch",
                "time": "2026-12-02T12:00:00Z",
                "fieldsV1": {"f:spec": {"f:cancelRequested": {}}},
            }
        ],
    }
    assert api.cancel_requester(meta) == {"requestedBy": "kubectl-patch"}
    assert api.cancel_requester(meta, audited=True) == {
        "requestedBy": "kubectl-patch",
        "requestedByUser": "system:admin",
    }
    obj = {"metadata": meta, "spec": {"cancelRequested": True}}
    assert "requestedByUser" not in (api.pending_stop(obj, NOW) or {})
    assert (api.pending_stop(obj, NOW, audited=True) or {}).get("requestedByUser") == "system:admin"


def test_a_cancel_request_is_told_once_even_when_the_holder_ends_the_run_at_once() -> None:
    c = controller()
    c.on_lease("ADDED", lease("kubestep-worker-w", "w", api.fmt_time(api.now())))
    c.on_execution("ADDED", run("r", status={"phase": api.Phase.RUNNING, "worker": "w"}))
    assert len(c.recorder) == 0
    cancel = {"cancelRequested": True, "cancelReason": "wrong input"}
    c.on_execution("MODIFIED", run("r", spec=cancel, status={"phase": api.Phase.RUNNING, "worker": "w"}))
    c.on_execution(
        "MODIFIED",
        run("r", spec=cancel, status={"phase": api.Phase.CANCELLED, "cancellation": {"reason": "Requested"}}),
    )
    assert len(c.recorder) == 1
    # A run that was already over when the operator (re)started is not told again.
    c.on_execution(
        "ADDED", run("old", spec=cancel, status={"phase": api.Phase.CANCELLED, "cancellation": {"reason": "Requested"}})
    )
    assert len(c.recorder) == 1 and c.announced == set()


# ----- one workflow id, two codes ---------------------------------------------------------------------


def _served(holder: str, source: str, renewed: dt.datetime, wid: str = "approval") -> dict[str, Any]:
    body = lease(f"kubestep-worker-{holder}", holder, api.fmt_time(renewed))
    body["metadata"]["annotations"][api.ANNOTATION_SOURCES] = json.dumps({wid: source})
    body["metadata"]["annotations"][api.ANNOTATION_WORKFLOWS] = wid
    return body


def test_a_worker_sees_a_live_other_code_for_its_workflow_id_and_nothing_else() -> None:
    ours = {"approval": "b.flows.approval", "other": "b.flows.other"}
    live = [_served("w1", "a.flows.approval", NOW), _served("w2", "b.flows.approval", NOW)]
    (found,) = collisions(ours, live, "me", NOW)
    assert "a.flows.approval" in found and "'w1'" in found
    stale = [_served("w1", "a.flows.approval", NOW - dt.timedelta(seconds=60))]
    assert collisions(ours, stale, "me", NOW) == []  # a dead worker's Lease is no collision
    assert collisions(ours, [_served("me", "a.flows.approval", NOW)], "me", NOW) == []  # its own old Lease
    garbage = lease("kubestep-worker-w3", "w3", api.fmt_time(NOW))
    garbage["metadata"]["annotations"][api.ANNOTATION_SOURCES] = "{not json"
    assert collisions(ours, [garbage], "me", NOW) == []


def test_the_operator_marks_queued_runs_of_a_workflow_served_by_two_codes() -> None:
    c = controller()
    now = api.now()
    c.on_lease("ADDED", _served("w1", "a.flows.approval", now))
    c.on_lease("ADDED", _served("w2", "b.flows.approval", now))
    message = c.conflict("ns", "approval", now)
    assert (
        message is not None and "a.flows.approval (worker w1)" in message and "b.flows.approval (worker w2)" in message
    )
    queued = run("r", spec={"workflow": "approval"}, status={"phase": api.Phase.QUEUED})
    d = decide(Snapshot.from_body(queued), now, c.liveness, frozenset({"approval"}), now, conflict=message)
    assert d.patch is not None and d.patch["reason"] == api.Reason.WORKFLOW_CONFLICT
    assert d.event is not None and d.event[:2] == ("Warning", api.Reason.WORKFLOW_CONFLICT)
    c.on_lease("DELETED", _served("w1", "a.flows.approval", now))
    assert c.conflict("ns", "approval", now) is None


def test_a_previous_life_is_the_same_pod_or_a_process_of_this_host_that_is_gone() -> None:
    here = f"host:{socket.gethostname()}/{os.getpid()}"
    assert previous_life("pod:u1/1", "pod:u1/1") and previous_life("pod:u1/7", "pod:u1/1")  # the same pod
    assert not previous_life("pod:u2/1", "pod:u1/1")  # another pod of the same name: must be seen to stop
    assert previous_life(f"host:{socket.gethostname()}/{2**22 + 7}", here)  # no such process here
    assert not previous_life(f"host:{socket.gethostname()}/{os.getppid()}", here)  # alive: another process
    assert not previous_life(f"host:elsewhere/{os.getpid()}", here) and not previous_life("", here)


# ----- queues ---------------------------------------------------------------------------------------


def test_a_queue_is_served_only_by_workers_of_that_queue() -> None:
    c = controller()
    now = api.now()
    gpu = _served("g", "a.flows.approval", now)
    gpu["metadata"]["annotations"][api.ANNOTATION_QUEUE] = "gpu"
    c.on_lease("ADDED", gpu)
    c.on_lease("ADDED", _served("d", "b.flows.approval", now))
    assert c.live_workflows("ns", now, "gpu") == frozenset({"approval"})
    assert c.live_workflows("ns", now, "tpu") == frozenset()
    assert c.conflict("ns", "approval", now) is None and c.conflict("ns", "approval", now, "gpu") is None
    theirs = [gpu]
    assert collisions({"approval": "b.flows.approval"}, theirs, "me", now) == []  # another queue
    assert collisions({"approval": "b.flows.approval"}, theirs, "me", now, "gpu") != []


def test_a_worker_queue_must_be_a_name_a_run_can_carry() -> None:
    assert WorkerSettings.load("m", env={"KUBESTEP_QUEUE": "gpu-a"}).queue == "gpu-a"
    assert WorkerSettings.load("m", env={}).queue == ""
    with pytest.raises(SystemExit, match="queue 'GPU'"):
        WorkerSettings.load("m", env={}, queue="GPU")
