"""Child runs on the real control plane: a parent starts children and waits for them durably (its
worker freed, the operator waking it when the last one ends), sees each ending as a typed error, and a
stop of any run reaches every unfinished run below it, written by the operator
(``sdk/kubestep/_protocol/family.py``; the rules alone: ``tests/unit/test_children.py``)."""

from __future__ import annotations

from typing import Any

from kubestep import KubestepClient
from kubestep import _protocol as api
from kubestep._protocol import family

from .harness import until


async def _tree(client: KubestepClient, root: str) -> list[Any]:
    """Every run of the tree under ``root`` (its root label), the root itself excluded."""
    listed = await client.list_executions(label_selector=f"{family.LABEL_ROOT}={root}")
    return [e for e in listed.items if e.id != root]


async def test_a_parent_waits_for_its_child_durably_and_gets_its_result(client: KubestepClient, workers: Any) -> None:
    workers()
    h = await client.start(
        "parent-of", {"workflow": "steps", "input": {"count": 2, "seconds": 0.2}}, run_timeout_seconds=30
    )
    e = await h.wait(timeout=60)
    assert e.status.phase == api.Phase.COMPLETED, e.status
    assert e.status.result["result"]["steps"] == 2
    assert e.status.attempt == 2, "the wait freed the worker; the operator re-queued it when the child ended"
    (child,) = await _tree(client, h.id)
    assert child.labels[family.LABEL_PARENT] == h.id and child.labels[family.LABEL_DEPTH] == "1"
    raw = await client._kube.get(api.execution_path(client.namespace, child.id))
    assert family.parent_of(raw) == (h.id, e.uid)
    assert raw["spec"]["runTimeoutSeconds"] == 30, "a child inherits its parent's budget"
    history = {s.key: s for s in await client.step_history(h.id)}
    assert history["child"].output == [{"id": child.id, "workflow": "steps"}]
    assert history["child~wait"].output[0]["phase"] == api.Phase.COMPLETED


async def test_a_parent_sees_each_ending_of_its_child_as_a_typed_error(client: KubestepClient, workers: Any) -> None:
    workers()
    failed = await client.start("parent-of", {"workflow": "fails", "input": {"message": "no stock"}})
    timed = await client.start("parent-of", {"workflow": "steps", "input": {"count": 50, "seconds": 0.2}, "timeout": 1})
    for h, error, said in ((failed, "ChildFailedError", "no stock"), (timed, "ChildTimedOutError", "RunTimeout")):
        e = await h.wait(timeout=60)
        assert e.status.phase == api.Phase.COMPLETED, e.status  # the parent decides: it caught it
        assert e.status.result["error"] == error and said in e.status.result["message"], e.status.result


async def test_a_cancel_of_the_root_reaches_every_run_of_the_tree(client: KubestepClient, workers: Any) -> None:
    workers(concurrency=20)
    h = await client.start("tree", {"depth": 2, "fanout": 2, "seconds": 0.05})

    async def all_running() -> bool:
        runs = await _tree(client, h.id)
        leaves = [r for r in runs if r.labels.get(family.LABEL_DEPTH) == "2"]
        return len(runs) == 6 and all(r.status.phase == api.Phase.RUNNING for r in leaves)

    await until(all_running, timeout=60, what="a tree of 7 runs, its 4 leaves running")
    await client.cancel_execution(h.id, reason="order withdrawn")
    e = await h.wait(timeout=30)
    assert (e.status.phase, e.status.reason) == (api.Phase.CANCELLED, api.StopReason.REQUESTED)

    async def all_ended() -> list[Any] | None:
        runs = await _tree(client, h.id)
        return runs if all(r.status.phase in api.TERMINAL_PHASES for r in runs) else None

    runs = await until(all_ended, timeout=60, what="every run of the tree ended")
    assert {r.status.phase for r in runs} == {api.Phase.CANCELLED}
    for r in runs:
        stop = r.status.cancellation
        assert stop and stop.requested_by == "kubestep-operator", stop
        assert stop.message and stop.message.startswith(f"parent {r.labels[family.LABEL_PARENT]} stopped")
        if r.labels[family.LABEL_DEPTH] == "2":
            # A grandchild says which ancestor stopped and why.
            assert f"parent {h.id} stopped (Requested: order withdrawn)" in stop.message, stop.message


async def test_a_parent_s_run_timeout_cancels_its_children_and_no_child_outlives_it(
    client: KubestepClient, workers: Any
) -> None:
    workers(concurrency=10)
    # The parent does not wait: it steps on until its own budget runs out. Its children get a longer
    # budget of their own, so only the cascade can stop them in time (with the parent's they would
    # also time out on their own a few hundred ms later, and race the cascade).
    h = await client.start(
        "tree",
        {"depth": 1, "fanout": 3, "wait": False, "after": -1, "seconds": 0.1, "child_timeout": 120},
        run_timeout_seconds=3,
    )
    e = await h.wait(timeout=60)
    assert (e.status.phase, e.status.reason) == (api.Phase.CANCELLED, api.StopReason.RUN_TIMEOUT)

    async def all_ended() -> list[Any] | None:
        runs = await _tree(client, h.id)
        return runs if len(runs) == 3 and all(r.status.phase in api.TERMINAL_PHASES for r in runs) else None

    runs = await until(all_ended, timeout=60, what="the children ended")
    for r in runs:
        assert r.status.phase == api.Phase.CANCELLED
        assert r.status.cancellation and r.status.cancellation.message == f"parent {h.id} stopped (RunTimeout)"
