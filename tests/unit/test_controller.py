"""The operator's stores and reactions, fed by hand: no cluster (nothing here touches the network)."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from kubestep import _protocol as api
from kubestep._kube import Kube
from kubestep_operator.controller import Controller
from kubestep_operator.keys import LeaseKey, RunKey
from kubestep_operator.reconciling import Urgency
from kubestep_operator.watching import Scope, scopes


def controller(*scope: Scope) -> Controller:
    offline = cast(Kube, object())  # the stores never touch the network; start() would
    return Controller(
        kube=offline,
        watch=offline,
        scopes=list(scope) or [Scope(None)],
        lease_grace=api.now() + dt.timedelta(seconds=15),
    )


def run(
    ns: str, name: str, phase: str | None = None, cancel: bool = False, worker: str | None = None, rv: str = "1"
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase} if phase else {}
    if worker:
        status["worker"] = worker
    return {
        "metadata": {"namespace": ns, "name": name, "uid": f"u-{name}", "resourceVersion": rv, "generation": 1},
        "spec": {"workflow": "wf", "cancelRequested": cancel},
        "status": status,
    }


def lease(ns: str, holder: str, renewed: dt.datetime, workflows: str = "wf") -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": ns,
            "name": f"kubestep-worker-{holder}",
            "annotations": {api.ANNOTATION_WORKFLOWS: workflows},
        },
        "spec": {"holderIdentity": holder, "renewTime": api.fmt_time(renewed), "leaseDurationSeconds": 15},
    }


def test_a_new_run_is_offered_for_admission_and_a_cancel_overtakes_it() -> None:
    c = controller()
    for i in range(100):
        c.on_execution("ADDED", run("ns", f"r{i}"))
    c.on_execution("MODIFIED", run("ns", "r99", cancel=True, rv="2"))
    assert len(c.backlog) == 100
    assert c.backlog.count(Urgency.STOP) == 1 and c.backlog.count(Urgency.ADMIT) == 99


def test_a_finished_or_deleted_run_is_forgotten_everywhere() -> None:
    c = controller()
    c.on_execution("ADDED", run("ns", "done"))
    c.on_execution("ADDED", run("ns", "gone"))
    c.on_execution("MODIFIED", run("ns", "done", phase=api.Phase.COMPLETED, rv="2"))
    c.on_execution("DELETED", run("ns", "gone", rv="3"))
    assert c.executions == {} and len(c.backlog) == 0 and len(c.scheduler) == 0


def test_a_relist_forgets_runs_deleted_while_the_watch_was_down_in_its_own_scope_only() -> None:
    a, b = Scope("a"), Scope("b")
    c = controller(a, b)
    for ns in ("a", "b"):
        c.on_execution("ADDED", run(ns, "kept"))
        c.on_execution("ADDED", run(ns, "deleted"))
    c.executions_listed(a, {("a", "kept")})
    assert set(c.executions) == {RunKey("a", "kept"), RunKey("b", "kept"), RunKey("b", "deleted")}


def test_names_that_look_internal_are_just_data() -> None:
    # A namespace and a run both named "lease", and a worker of that name: three different things.
    c = controller()
    now = api.now()
    c.on_lease("ADDED", lease("lease", "lease", now))
    c.on_execution("ADDED", run("lease", "lease", phase=api.Phase.RUNNING, worker="lease"))
    assert LeaseKey("lease", "lease") in c.workers and RunKey("lease", "lease") in c.executions
    assert RunKey("lease", "lease") != LeaseKey("lease", "lease")
    assert c.scheduler.due(LeaseKey("lease", "lease")) is not None
    c.fire(RunKey("lease", "lease"))  # a run's wake-up is not mistaken for a Lease check, nor the reverse
    c.fire(LeaseKey("lease", "lease"))


def test_a_lease_that_expired_is_dropped_when_it_fires_and_its_runs_are_requeued() -> None:
    c = controller()
    c.lease_grace = api.now() - dt.timedelta(seconds=1)
    c.on_lease("ADDED", lease("ns", "w1", api.now() - dt.timedelta(seconds=60)))
    c.on_execution("ADDED", run("ns", "held", phase=api.Phase.RUNNING, worker="w1"))
    assert c.backlog.count(Urgency.PROGRESS) == 1  # the holder's lease has expired: WorkerLost
    c.fire(LeaseKey("ns", "w1"))
    assert LeaseKey("ns", "w1") not in c.workers


def test_a_worker_serving_a_new_workflow_rechecks_the_queued_runs() -> None:
    c = controller()
    queued = run("ns", "r", phase=api.Phase.QUEUED)
    queued["status"]["conditions"] = [
        api.condition(api.ConditionType.SCHEDULED, False, "NoWorker", "none", api.now(), 1)
    ]
    c.on_execution("ADDED", queued)
    assert len(c.backlog) == 0  # already says NoWorker: nothing to write
    c.on_lease("ADDED", lease("ns", "w1", api.now()))
    assert c.backlog.count(Urgency.ADMIT) == 1  # now Pending: a worker serves it


def test_scopes_split_names_from_patterns() -> None:
    assert scopes(["a", "b", "a"], False) == [Scope("a"), Scope("b")]
    assert scopes([], True) == [Scope(None)]
    got = scopes(["a", "t-*"], False)
    assert got == [Scope("a"), Scope(None, ("t-*",), ("a",))]
    wide = got[1]
    assert wide.accept("t-1") and not wide.accept("a") and not wide.accept("other")
    assert Scope("a").accept("a") and not Scope("a").accept("t-1")
