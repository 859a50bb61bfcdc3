"""Child runs, rule by rule: the family contract (names, links, inheritance, outcomes), the operator's
kinship index and its two rules (the cascade, the wake of a parent whose children ended), and the
in-memory model. On the control plane: ``tests/test_children.py``."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from kubestep import (
    ChildCall,
    ChildCancelledError,
    ChildFailedError,
    ChildLimitError,
    ChildOutcome,
    ChildTimedOutError,
    WorkflowContext,
    workflow,
)
from kubestep import _protocol as api
from kubestep._protocol import family
from kubestep.testing import WorkflowEnvironment
from kubestep_operator.keys import RunKey
from kubestep_operator.kinship import Kinship
from kubestep_operator.reconciling import Snapshot, Urgency, decide, urgency

from .test_reconciling import ALIVE, GRACE, T0


def body(
    name: str,
    *,
    uid: str | None = None,
    parent: tuple[str, str] | None = None,
    phase: str | None = "Running",
    spec: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "namespace": "ns",
        "name": name,
        "uid": uid or f"uid-{name}",
        "resourceVersion": "1",
        "generation": 1,
        "creationTimestamp": "2026-11-25T11:59:00Z",
        "labels": dict(labels or {}),
    }
    if parent:
        meta["ownerReferences"] = [
            {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": parent[0], "uid": parent[1], "controller": True}
        ]
    st = {"phase": phase, **(status or {})} if phase else dict(status or {})
    return {"metadata": meta, "spec": {"workflow": "wf", **(spec or {})}, "status": st}


# ----- the family contract ---------------------------------------------------------------------


def test_a_child_is_named_by_its_parent_s_uid_and_key_and_inherits_what_bounds_it() -> None:
    p = body("order-7", spec={"runTimeoutSeconds": 60, "cancelGracePeriodSeconds": 5, "queue": "gpu"})
    c = family.child_body(p, "charge", "pay", {"x": 1})
    assert c["metadata"]["name"] == family.child_name("order-7", "uid-order-7", "charge")
    assert c["metadata"]["name"] != family.child_name("order-7", "another-uid", "charge")  # a new run of the name
    assert c["metadata"]["name"].startswith("order-7-") and len(c["metadata"]["name"]) <= 63
    assert c["metadata"]["labels"] == {
        family.LABEL_PARENT: "order-7",
        family.LABEL_ROOT: "order-7",
        family.LABEL_DEPTH: "1",
        api.LABEL_WORKFLOW: "pay",
    }
    assert c["spec"] == {
        "workflow": "pay",
        "input": {"x": 1},
        "runTimeoutSeconds": 60,
        "cancelGracePeriodSeconds": 5,
        "queue": "gpu",
    }
    assert family.parent_of(c) == ("order-7", "uid-order-7")
    own = family.child_body(p, "charge", "pay", None, run_timeout_seconds=5, queue="")
    assert own["spec"]["runTimeoutSeconds"] == 5 and "queue" not in own["spec"]
    grandchild = family.child_body({**c, "metadata": {**c["metadata"], "uid": "u2"}}, "k", "pay", None)
    assert grandchild["metadata"]["labels"][family.LABEL_ROOT] == "order-7"
    assert grandchild["metadata"]["labels"][family.LABEL_DEPTH] == "2"
    long = family.label_value("x" * 200)
    assert len(long) <= 63 and long != family.label_value("x" * 199)


def test_only_a_controller_reference_to_a_run_makes_a_parent() -> None:
    c = body("c", parent=("p", "uid-p"))
    assert family.parent_of(c) == ("p", "uid-p")
    c["metadata"]["ownerReferences"][0]["controller"] = False
    assert family.parent_of(c) is None
    c["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "p", "controller": True}]
    assert family.parent_of(c) is None
    assert family.depth_of(body("x", labels={family.LABEL_DEPTH: "-1"})) == 0  # forged: counts as a root


def test_why_a_parent_s_children_stop() -> None:
    assert family.parent_stop(body("p")) is None
    assert family.parent_stop(body("p", phase="Waiting")) is None
    said = family.parent_stop(body("p", spec={"cancelRequested": True, "cancelReason": "wrong order"}))
    assert said == "parent p stopped (Requested: wrong order)"
    timed = family.parent_stop(body("p", phase="Cancelling", status={"cancellation": {"reason": "RunTimeout"}}))
    assert timed == "parent p stopped (RunTimeout)"
    assert family.parent_stop(body("p", phase="Completed")) == "parent p ended (Completed)"
    # A grandchild's reason carries the ancestor's, within spec.cancelReason's limit.
    deep = family.parent_stop(body("c", spec={"cancelRequested": True, "cancelReason": "x" * 2000}))
    assert deep is not None and len(deep) == family.CANCEL_REASON_MAX


def test_what_a_parent_sees_of_each_ending() -> None:
    assert family.outcome(body("c")) is None
    done = family.outcome(body("c", phase="Completed", status={"result": 3}))
    assert done == {"id": "c", "phase": "Completed", "reason": None, "result": 3}
    assert ChildOutcome.of(done).value() == 3
    failed = ChildOutcome.of(family.outcome(body("c", phase="Failed", status={"error": {"type": "E", "message": "m"}})))
    with pytest.raises(ChildFailedError, match="E: m"):
        failed.value()
    stop = {"cancellation": {"reason": "Requested", "message": "parent p stopped", "requestedBy": "kubestep-operator"}}
    cancelled = ChildOutcome.of(family.outcome(body("c", phase="Cancelled", status=stop)))
    with pytest.raises(ChildCancelledError) as info:
        cancelled.value()
    assert info.value.requested_by == "kubestep-operator" and info.value.message == "parent p stopped"
    assert not isinstance(info.value, ChildTimedOutError)
    timed = ChildOutcome.of(
        family.outcome(body("c", phase="Cancelled", status={"cancellation": {"reason": "RunTimeout"}}))
    )
    with pytest.raises(ChildTimedOutError):
        timed.value()


# ----- the operator: kinship and its rules -----------------------------------------------------


def test_kinship_indexes_children_and_says_whom_to_look_at_again() -> None:
    k = Kinship()
    assert k.seen(body("p")) == ([], [])
    assert k.seen(body("c1", parent=("p", "uid-p"))) == ([], [])
    k.seen(body("c2", parent=("p", "uid-p"), phase="Queued"))
    k.seen(body("stranger", parent=("p", "uid-of-an-older-p")))  # not this p's
    assert k.children(RunKey("ns", "p")) == [RunKey("ns", "c1"), RunKey("ns", "c2")]
    assert k.parent_stop(RunKey("ns", "c1"), ("p", "uid-p")) is None
    # The parent is cancelled: look at its children again; they must stop.
    again = k.seen(body("p", spec={"cancelRequested": True}))
    assert again == ([RunKey("ns", "c1"), RunKey("ns", "c2")], [])
    assert k.parent_stop(RunKey("ns", "c1"), ("p", "uid-p")) == "parent p stopped (Requested)"
    assert k.parent_stop(RunKey("ns", "stranger"), ("p", "uid-of-an-older-p")) is None
    assert k.seen(body("p", spec={"cancelRequested": True})) == ([], [])  # said once
    # A child ends: look at its parent again.
    assert not k.all_ended("ns", ("c1", "c2"))
    assert k.seen(body("c1", parent=("p", "uid-p"), phase="Completed")) == ([], [RunKey("ns", "p")])
    assert not k.all_ended("ns", ("c1", "c2"))
    assert k.gone(RunKey("ns", "c2")) == [RunKey("ns", "p")]
    assert k.all_ended("ns", ("c1", "c2")), "a deleted child has ended too"
    assert k.listed(lambda ns: ns == "ns", {("ns", "p")}) == [RunKey("ns", "p")]  # c1 went while unseen
    assert len(k) == 1 and k.children(RunKey("ns", "p")) == []


def child_snap(phase: str | None, **kw: Any) -> Snapshot:
    return Snapshot.from_body(body("c", parent=("p", "uid-p"), phase=phase, **kw))


def run(s: Snapshot) -> Any:
    return decide(s, T0, lambda ns, w: ALIVE, frozenset({"wf"}), GRACE)


@pytest.mark.parametrize("phase", [None, "Queued", "Running", "Waiting"])
def test_a_child_whose_parent_stopped_is_stopped_first_of_all(phase: str | None) -> None:
    why = "parent p stopped (Requested: wrong order)"
    s = dataclasses.replace(child_snap(phase, status={"worker": "w"}), parent_stopped=why)
    d = run(s)
    assert d.patch is not None and urgency(s, d) == Urgency.STOP
    stop = d.patch["cancellation"]
    assert (stop["reason"], stop["message"], stop["requestedBy"]) == ("Requested", why, "kubestep-operator")
    if phase == "Running":
        # The signal to its holder, which lets the step in flight finish within the child's grace period.
        assert d.patch["phase"] == api.Phase.CANCELLING and d.guard == {"phase": "Running", "worker": "w"}
        assert d.event and d.event[1] == api.Reason.PARENT_STOPPED
    else:
        assert d.patch["phase"] == api.Phase.CANCELLED  # nobody holds it: ended at once
    # Once stopping (or cancelled by its user), the ordinary rules end it; nothing is written twice.
    cancelling = dataclasses.replace(
        child_snap("Cancelling", status={"worker": "w", "cancellation": stop}), parent_stopped=why
    )
    assert run(cancelling).patch is None
    requested = dataclasses.replace(child_snap(phase, spec={"cancelRequested": True}), parent_stopped=why)
    assert (run(requested).patch or {}).get("cancellation", {}).get("message") != why
    assert run(dataclasses.replace(child_snap("Completed"), parent_stopped="x")) == run(child_snap("Completed"))


def test_a_parent_waiting_on_children_is_woken_when_the_last_ends_and_not_before() -> None:
    waiting = Snapshot.from_body(
        body("p", phase="Waiting", status={"waitingFor": {"key": "k~wait", "children": ["c1", "c2"]}})
    )
    assert waiting.waiting_for_children == ("c1", "c2")
    d = run(waiting)
    assert d.patch is None and d.next_due is None, "no timeout: it waits for the operator to see them end"
    d = run(dataclasses.replace(waiting, children_done=True))
    assert d.patch and d.patch["phase"] == api.Phase.QUEUED and d.patch["reason"] == api.Reason.CHILDREN_ENDED
    assert api.TRANSITIONS  # the transition is declared for the operator (api.woken)
    # A cancel of the waiting parent wins over its children.
    cancelled = Snapshot.from_body(
        body("p", phase="Waiting", spec={"cancelRequested": True}, status={"waitingFor": {"children": ["c1"]}})
    )
    d = run(dataclasses.replace(cancelled, children_done=True))
    assert d.patch and d.patch["phase"] == api.Phase.CANCELLED


# ----- the in-memory model ---------------------------------------------------------------------


async def _double(n: int) -> int:
    return 2 * n


@workflow(id="test-child-double")
async def double(ctx: WorkflowContext, input: Any) -> int:
    return int(await ctx.step.run("double", _double, int(input)))


@workflow(id="test-child-parent")
async def parent(ctx: WorkflowContext, input: Any) -> Any:
    one = await ctx.step.invoke_and_wait("one", "test-child-double", 5)
    many = await ctx.step.batch_invoke_and_wait("many", [ChildCall("test-child-double", i) for i in range(3)])
    try:
        await ctx.step.invoke_and_wait("doomed", "test-child-double", 1)
        doomed = "completed"
    except ChildCancelledError as e:
        doomed = f"cancelled: {e.reason}"
    return {"one": one, "many": [o.value() for o in many], "doomed": doomed}


async def test_the_model_runs_children_and_a_parent_catches_a_child_s_cancel() -> None:
    env = WorkflowEnvironment(child_plans={"doomed": {"cancel_before": "double", "reason": "not needed"}})
    run_ = await env.run(parent)
    assert run_.phase == api.Phase.COMPLETED, run_.error
    assert run_.result == {"one": 10, "many": [0, 2, 4], "doomed": "cancelled: Requested"}
    keys = [s["key"] for s in run_.steps]
    assert keys == ["one", "one~wait", "many", "many~wait", "doomed", "doomed~wait"]
    assert len(env.child_runs) == 5


@workflow(id="test-child-deep")
async def deep(ctx: WorkflowContext, input: Any) -> Any:
    return await ctx.step.invoke_and_wait("down", "test-child-deep", None)


async def test_a_tree_deeper_than_the_limit_fails_with_a_clear_error() -> None:
    env = WorkflowEnvironment()
    run_ = await env.run(deep)
    assert run_.phase == api.Phase.FAILED and isinstance(run_.error, ChildFailedError)
    # The root's child failed because its own child did, down to the one that could not start its child.
    assert len(env.child_runs) == family.MAX_DEPTH
    (bottom,) = [r for r in env.child_runs.values() if isinstance(r.error, ChildLimitError)]
    assert f"a child run {family.MAX_DEPTH + 1} levels below its root" in str(bottom.error)


@workflow(id="test-child-fanout")
async def fanout(ctx: WorkflowContext, input: Any) -> Any:
    await ctx.step.batch_invoke("first", [ChildCall("test-child-double", 1)] * int(input))
    await ctx.step.batch_invoke("second", [ChildCall("test-child-double", 1)] * 2)


async def test_more_children_than_the_limit_are_refused_before_any_is_started() -> None:
    env = WorkflowEnvironment()
    run_ = await env.run(fanout, family.MAX_CHILDREN - 1)
    assert run_.phase == api.Phase.FAILED and isinstance(run_.error, ChildLimitError)
    assert "would start child run 1001" in str(run_.error)
    assert [s["key"] for s in run_.steps] == ["first"], "the second batch was never started"
    assert len(env.children) == family.MAX_CHILDREN - 1
