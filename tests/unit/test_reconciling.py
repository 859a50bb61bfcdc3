"""The operator's policy, rule by rule: pure logic, no cluster needed."""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubestep import _api as api
from kubestep_operator.reconciling import Liveness, Snapshot, decide

T0 = dt.datetime(2026, 11, 25, 12, 0, 0, tzinfo=dt.timezone.utc)


def snap(phase: str | None, *, cancel: bool = False, worker: str | None = None, deadline: dt.datetime | None = None,
         wake_at: dt.datetime | None = None, cancellation: dict[str, Any] | None = None) -> Snapshot:
    status: dict[str, Any] = {}
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
    body = {"metadata": {"namespace": "ns", "name": "r", "uid": "u", "resourceVersion": "7", "generation": 1},
            "spec": {"workflow": "wf", "cancelRequested": cancel, "runTimeoutSeconds": 2}, "status": status}
    return Snapshot.from_body(body)


ALIVE = Liveness(T0 + dt.timedelta(seconds=10), frozenset({"wf"}))
GONE = Liveness(T0 - dt.timedelta(seconds=1), frozenset({"wf"}))
GRACE = T0 + dt.timedelta(seconds=15)


def run(s: Snapshot, now: dt.datetime = T0, live: Liveness | None = ALIVE, served: frozenset[str] | None = None):
    return decide(s, now, lambda ns, w: live, frozenset({"wf"}) if served is None else served, GRACE)


def test_new_run_is_queued() -> None:
    d = run(snap(None))
    assert d.patch and d.patch["phase"] == api.QUEUED and d.patch["reason"] == "Pending"


def test_new_run_for_unserved_workflow_is_queued_with_no_worker_condition() -> None:
    d = run(snap(None), served=frozenset({"other"}))
    assert d.patch and d.patch["phase"] == api.QUEUED and d.patch["reason"] == "NoWorker"
    cond = {c["type"]: c for c in d.patch["conditions"]}[api.COND_SCHEDULED]
    assert cond["status"] == "False" and "no live worker serves workflow 'wf'" in cond["message"]


def test_cancel_queued_and_waiting_finishes_at_once() -> None:
    for phase in (api.QUEUED, api.WAITING):
        d = run(snap(phase, cancel=True, wake_at=T0 + dt.timedelta(hours=1)))
        assert d.patch and d.patch["phase"] == api.CANCELLED
        assert d.patch["cancellation"]["reason"] == api.REQUESTED
        assert d.patch["cancellation"]["acknowledgedAt"]


def test_cancel_running_signals_the_worker_and_keeps_it_holding() -> None:
    d = run(snap(api.RUNNING, cancel=True, worker="w1"))
    assert d.patch and d.patch["phase"] == api.CANCELLING
    assert d.patch["cancellation"]["reason"] == api.REQUESTED
    assert "worker" not in d.patch


def test_deadline_turns_into_run_timeout_cancellation() -> None:
    d = run(snap(api.RUNNING, worker="w1", deadline=T0))
    assert d.patch and d.patch["phase"] == api.CANCELLING
    assert d.patch["cancellation"] == {"reason": api.RUN_TIMEOUT, "requestedAt": api.fmt_time(T0)}


def test_before_deadline_sleeps_until_deadline() -> None:
    deadline = T0 + dt.timedelta(seconds=2)
    d = run(snap(api.RUNNING, worker="w1", deadline=deadline))
    assert d.patch is None and d.next_due == deadline


def test_cancelling_with_live_worker_waits_for_the_step_boundary() -> None:
    d = run(snap(api.CANCELLING, worker="w1", cancellation={"reason": api.REQUESTED}))
    assert d.patch is None and d.next_due == ALIVE.expires


def test_gone_worker_after_deadline_ends_run_timeout() -> None:
    d = run(snap(api.CANCELLING, worker="w1", deadline=T0 - dt.timedelta(seconds=5),
                 cancellation={"reason": api.RUN_TIMEOUT, "requestedAt": "x"}), live=GONE)
    assert d.patch and d.patch["phase"] == api.CANCELLED and d.patch["reason"] == api.RUN_TIMEOUT


def test_gone_worker_before_deadline_requeues_for_replay() -> None:
    d = run(snap(api.RUNNING, worker="w1", deadline=T0 + dt.timedelta(seconds=5)), live=GONE)
    assert d.patch and d.patch["phase"] == api.QUEUED and d.patch["worker"] is None
    assert d.event and d.event[1] == "WorkerLost"


def test_unknown_worker_is_given_one_lease_of_grace() -> None:
    s = snap(api.RUNNING, worker="w1")
    assert run(s, live=None).next_due == GRACE
    later = decide(s, GRACE, lambda ns, w: None, frozenset(), GRACE)
    assert later.patch and later.patch["phase"] == api.QUEUED


def test_wait_over_requeues_and_not_before() -> None:
    wake = T0 + dt.timedelta(seconds=3)
    assert run(snap(api.WAITING, wake_at=wake)).next_due == wake
    d = run(snap(api.WAITING, wake_at=wake), now=wake)
    assert d.patch and d.patch["phase"] == api.QUEUED and d.patch["wakeAt"] is None


def test_terminal_runs_are_left_alone_even_when_cancelled() -> None:
    for phase in api.TERMINAL_PHASES:
        assert run(snap(phase, cancel=True)) == type(run(snap(phase)))()


def test_queued_condition_flips_when_workers_come_and_go() -> None:
    d = run(snap(api.QUEUED), served=frozenset())
    assert d.patch and d.patch["reason"] == "NoWorker"
