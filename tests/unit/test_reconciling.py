"""The operator's policy, rule by rule: pure logic, no cluster needed."""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubestep import _protocol as api
from kubestep_operator.reconciling import HEAD_START, Liveness, Snapshot, decide

T0 = dt.datetime(2026, 11, 25, 12, 0, 0, tzinfo=dt.UTC)


def snap(
    phase: str | None,
    *,
    cancel: bool = False,
    worker: str | None = None,
    deadline: dt.datetime | None = None,
    wake_at: dt.datetime | None = None,
    cancellation: dict[str, Any] | None = None,
    spec: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    audited: bool = False,
) -> Snapshot:
    extra_status = status or {}
    status = {}
    if phase:
        status["phase"] = phase
    if worker:
        status["worker"] = worker
    if deadline:
        status["deadline"] = api.fmt_time(deadline)
    if wake_at:
        status["wakeAt"] = api.fmt_time(wake_at)
    if cancellation:
        status["cancellation"] = cancellation
    body = {
        "metadata": {
            "namespace": "ns",
            "name": "r",
            "uid": "u",
            "resourceVersion": "7",
            "generation": 1,
            "creationTimestamp": "2026-11-25T11:59:00Z",
            **(meta or {}),
        },
        "spec": {"workflow": "wf", "cancelRequested": cancel, "runTimeoutSeconds": 2, **(spec or {})},
        "status": {**status, **extra_status},
    }
    return Snapshot.from_body(body, audited=audited)


ALIVE = Liveness(T0 + dt.timedelta(seconds=10), frozenset({"wf"}))
GONE = Liveness(T0 - dt.timedelta(seconds=1), frozenset({"wf"}))
GRACE = T0 + dt.timedelta(seconds=15)


def run(s: Snapshot, now: dt.datetime = T0, live: Liveness | None = ALIVE, served: frozenset[str] | None = None):
    return decide(s, now, lambda ns, w: live, frozenset({"wf"}) if served is None else served, GRACE)


def test_new_run_is_queued() -> None:
    d = run(snap(None))
    assert d.patch and d.patch["phase"] == api.Phase.QUEUED and d.patch["reason"] == "Pending"


def test_new_run_for_unserved_workflow_is_queued_with_no_worker_condition() -> None:
    d = run(snap(None), served=frozenset({"other"}))
    assert d.patch and d.patch["phase"] == api.Phase.QUEUED and d.patch["reason"] == "NoWorker"
    cond = {c["type"]: c for c in d.patch["conditions"]}[api.ConditionType.SCHEDULED]
    assert cond["status"] == "False" and "no live worker serves workflow 'wf'" in cond["message"]


def test_cancel_queued_and_waiting_finishes_at_once() -> None:
    for phase in (api.Phase.QUEUED, api.Phase.WAITING):
        d = run(snap(phase, cancel=True, wake_at=T0 + dt.timedelta(hours=1)))
        assert d.patch and d.patch["phase"] == api.Phase.CANCELLED
        assert d.patch["cancellation"]["reason"] == api.StopReason.REQUESTED
        assert d.patch["cancellation"]["acknowledgedAt"]


def test_cancel_running_signals_the_worker_and_keeps_it_holding() -> None:
    d = run(snap(api.Phase.RUNNING, cancel=True, worker="w1"))
    assert d.patch and d.patch["phase"] == api.Phase.CANCELLING
    assert d.patch["cancellation"]["reason"] == api.StopReason.REQUESTED
    assert "worker" not in d.patch


def test_deadline_gives_the_live_holder_a_head_start_then_turns_into_run_timeout_cancellation() -> None:
    # The holder times the budget itself and ends the run at the step boundary; a Cancelling write at
    # the deadline would race that ending write.
    d = run(snap(api.Phase.RUNNING, worker="w1", deadline=T0))
    assert d.patch is None and d.next_due == T0 + HEAD_START
    d = run(snap(api.Phase.RUNNING, worker="w1", deadline=T0), now=T0 + HEAD_START)
    assert d.patch and d.patch["phase"] == api.Phase.CANCELLING
    assert d.patch["cancellation"] == {"reason": api.StopReason.RUN_TIMEOUT, "requestedAt": api.fmt_time(T0)}


def test_before_deadline_sleeps_until_deadline() -> None:
    deadline = T0 + dt.timedelta(seconds=2)
    d = run(snap(api.Phase.RUNNING, worker="w1", deadline=deadline))
    assert d.patch is None and d.next_due == deadline


def test_cancelling_with_live_worker_waits_for_the_step_boundary() -> None:
    d = run(snap(api.Phase.CANCELLING, worker="w1", cancellation={"reason": api.StopReason.REQUESTED}))
    assert d.patch is None and d.next_due == ALIVE.expires


def test_gone_worker_after_deadline_ends_run_timeout() -> None:
    d = run(
        snap(
            api.Phase.CANCELLING,
            worker="w1",
            deadline=T0 - dt.timedelta(seconds=5),
            cancellation={"reason": api.StopReason.RUN_TIMEOUT, "requestedAt": "x"},
        ),
        live=GONE,
    )
    assert d.patch and d.patch["phase"] == api.Phase.CANCELLED and d.patch["reason"] == api.StopReason.RUN_TIMEOUT


def test_gone_worker_before_deadline_requeues_for_replay() -> None:
    d = run(snap(api.Phase.RUNNING, worker="w1", deadline=T0 + dt.timedelta(seconds=5)), live=GONE)
    assert d.patch and d.patch["phase"] == api.Phase.QUEUED and d.patch["worker"] is None
    assert d.event and d.event[1] == "WorkerLost"


def test_unknown_worker_is_given_one_lease_of_grace() -> None:
    s = snap(api.Phase.RUNNING, worker="w1")
    assert run(s, live=None).next_due == GRACE
    later = decide(s, GRACE, lambda ns, w: None, frozenset(), GRACE)
    assert later.patch and later.patch["phase"] == api.Phase.QUEUED


def test_wait_over_requeues_and_not_before() -> None:
    wake = T0 + dt.timedelta(seconds=3)
    assert run(snap(api.Phase.WAITING, wake_at=wake)).next_due == wake
    d = run(snap(api.Phase.WAITING, wake_at=wake), now=wake)
    assert d.patch and d.patch["phase"] == api.Phase.QUEUED and d.patch["wakeAt"] is None


def test_terminal_runs_are_left_alone_even_when_cancelled() -> None:
    for phase in api.TERMINAL_PHASES:
        assert run(snap(phase, cancel=True)) == type(run(snap(phase)))()


def test_queued_condition_flips_when_workers_come_and_go() -> None:
    d = run(snap(api.Phase.QUEUED), served=frozenset())
    assert d.patch and d.patch["reason"] == "NoWorker"


# ----- stopping runaway work (issue 8) ------------------------------------------------------------

KUBECTL_CANCEL = {
    "managedFields": [
        {
            "manager": "kubestep-sdk",
            "operation": "Update",
            "time": "2026-11-25T11:00:00Z",
            "fieldsV1": {"f:spec": {"f:workflow": {}, "f:input": {}}},
        },
        {
            "manager": "kubectl-patch",
            "operation": "Update",
            "time": "2026-11-25T11:59:30Z",
            "fieldsV1": {"f:spec": {"f:cancelRequested": {}, "f:cancelReason": {}}},
        },
    ]
}


def test_a_cancel_records_the_reason_given_and_who_asked() -> None:
    s = snap(api.Phase.RUNNING, cancel=True, worker="w1", spec={"cancelReason": "wrong input"}, meta=KUBECTL_CANCEL)
    d = run(s)
    assert d.patch and d.patch["cancellation"] == {
        "reason": api.StopReason.REQUESTED,
        "message": "wrong input",
        "requestedBy": "kubectl-patch",
        "requestedAt": api.fmt_time(T0),
    }
    assert d.event and "kubectl-patch" in d.event[2]
    # The user the audit policies wrote, only where they vouch for it (KUBESTEP_CANCEL_AUDIT).
    by_alice = {**KUBECTL_CANCEL, "annotations": {api.ANNOTATION_CANCELLED_BY: "alice@example.com"}}
    d = run(snap(api.Phase.QUEUED, cancel=True, meta=by_alice, audited=True))
    assert d.patch and d.patch["cancellation"]["requestedByUser"] == "alice@example.com"
    d = run(snap(api.Phase.QUEUED, cancel=True, meta=by_alice))
    assert d.patch and "requestedByUser" not in d.patch["cancellation"]


def test_cancelling_never_outlasts_the_grace_period_plus_one_lease() -> None:
    requested = T0 - dt.timedelta(seconds=10)
    s = snap(
        api.Phase.CANCELLING,
        worker="w1",
        spec={"cancelGracePeriodSeconds": 5},
        cancellation={"reason": api.StopReason.REQUESTED, "requestedAt": api.fmt_time(requested)},
    )
    bound = requested + dt.timedelta(seconds=5 + 15)
    live = Liveness(T0 + dt.timedelta(hours=1), frozenset({"wf"}))  # a live worker that does not end it
    assert run(s, live=live).next_due == bound
    d = run(s, now=bound, live=live)
    assert d.patch and d.patch["phase"] == api.Phase.CANCELLED and d.patch["reason"] == api.Reason.GRACE_EXPIRED
    assert d.patch["cancellation"]["reason"] == api.StopReason.REQUESTED and d.guard is None


def test_queue_timeout_counts_from_the_last_time_the_run_was_queued() -> None:
    queued = T0 - dt.timedelta(seconds=30)
    s = snap(
        api.Phase.QUEUED,
        spec={"queueTimeoutSeconds": 60},
        status={
            "queuedAt": api.fmt_time(queued),
            "conditions": [api.condition(api.ConditionType.SCHEDULED, False, "Pending", "waiting", queued, 1)],
        },
    )
    assert run(s).next_due == queued + dt.timedelta(seconds=60)
    d = run(s, now=queued + dt.timedelta(seconds=60))
    assert d.patch and d.patch["phase"] == api.Phase.CANCELLED and d.patch["reason"] == api.StopReason.QUEUE_TIMEOUT
    # Without queuedAt (written before this field existed): from creation.
    old = snap(api.Phase.QUEUED, spec={"queueTimeoutSeconds": 60})
    assert old.queued_since == dt.datetime(2026, 11, 25, 11, 59, tzinfo=dt.UTC)


def test_every_return_to_queued_restarts_the_queue_clock() -> None:
    for d in (
        run(snap(None)),
        run(snap(api.Phase.WAITING, wake_at=T0), now=T0),
        run(snap(api.Phase.RUNNING, worker="w1"), live=GONE),
    ):
        assert d.patch and d.patch["phase"] == api.Phase.QUEUED and d.patch["queuedAt"] == api.fmt_time(T0)


def test_a_run_waiting_for_an_event_is_requeued_when_it_arrives_and_not_for_a_consumed_one() -> None:
    waiting = {"waitingFor": {"key": "k", "topic": "approved"}, "eventsConsumed": ["e1"]}
    events = [{"name": "e1", "topic": "approved"}, {"name": "x", "topic": "other"}]
    s = snap(api.Phase.WAITING, spec={"events": events}, status=waiting)
    assert run(s).patch is None  # no timeout and nothing new: it waits
    s = snap(api.Phase.WAITING, spec={"events": [*events, {"name": "e2", "topic": "approved"}]}, status=waiting)
    d = run(s)
    assert d.patch and d.patch["phase"] == api.Phase.QUEUED and d.patch["reason"] == "EventArrived"
    timeout = T0 + dt.timedelta(seconds=5)
    s = snap(api.Phase.WAITING, wake_at=timeout, spec={"events": events}, status=waiting)
    assert run(s).next_due == timeout
    d = run(s, now=timeout)
    assert d.patch and d.patch["reason"] == "WaitOver" and "timed out" in d.patch["message"]


def test_a_live_holder_gets_a_head_start_before_the_operator_writes_cancelling() -> None:
    """The holder ends a cancelled run itself; the operator records Cancelling only if it has not
    done so within the head start (counted from the apiserver's time of the cancel)."""
    asked = T0 - dt.timedelta(seconds=1)
    meta = {
        "managedFields": [
            {"manager": "kubectl-patch", "time": api.fmt_time(asked), "fieldsV1": {"f:spec": {"f:cancelRequested": {}}}}
        ]
    }
    s = snap(api.Phase.RUNNING, cancel=True, worker="w1", meta=meta)
    d = run(s)
    assert d.patch is None and d.next_due == asked + dt.timedelta(seconds=2)
    d = run(s, now=asked + dt.timedelta(seconds=2))
    assert d.patch and d.patch["phase"] == api.Phase.CANCELLING


def test_after_the_operator_lost_sight_of_the_leases_holders_get_one_lease_to_renew() -> None:
    # The apiserver restarted: no worker could renew, and the operator's watch broke. Its Leases
    # look expired when the operator lists them again, but the holder is not called lost until
    # one lease after that list (blind_until); then it is.
    s = snap(api.Phase.RUNNING, worker="w1", deadline=T0 + dt.timedelta(seconds=60))
    blind = T0 + dt.timedelta(seconds=2)
    held = decide(s, T0, lambda ns, w: GONE, frozenset({"wf"}), GRACE, 15.0, blind)
    assert held.patch is None and held.next_due == blind
    lost = decide(s, blind, lambda ns, w: GONE, frozenset({"wf"}), GRACE, 15.0, blind)
    assert lost.patch and lost.patch["reason"] == api.Reason.WORKER_LOST
    # Without the grace, at once.
    assert run(s, live=GONE).patch is not None
