"""Two modules that define one workflow id in one namespace (issue 17, finding 8).

Before: both workers started, each claimed the other's runs, and a run that one started and the other
resumed ended ``Failed/ReplayMismatch`` with no warning. After: the second worker refuses to start
(naming both codes), and where two codes are live anyway (a worker of an older version, or two started
at once) the operator marks the queued runs ``Scheduled=False/WorkflowConflict`` with a Warning Event.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubestep import KubestepClient
from kubestep import _protocol as api

from ..conftest import Cluster
from ..harness import E2E, Proc, start_worker, until, wait_until

pytestmark = pytest.mark.skipif(E2E, reason="starts worker processes: local control plane")


async def test_a_worker_whose_module_redefines_a_served_workflow_id_refuses_to_start(
    control_plane: Cluster, namespace: str, workers: Any, logs: Path, procs: list[Proc]
) -> None:
    first = workers()
    twin = start_worker(control_plane.kubeconfig, logs, namespace, module="tests.security.collide")
    procs.append(twin)
    wait_until(lambda: not twin.alive(), 20, what="the colliding worker to refuse to start")
    log = twin.log.read_text()
    assert twin.stop(timeout=5) not in (0, None), log
    assert "workflow 'steps' is served here by tests.security.collide.other_steps" in log, log
    assert "kubestep.examples.steps" in log and first.name in log, log
    # Another version of the same code (a rolling update) is no collision.
    same = workers()
    assert same is not None and same.alive()


def _lease(holder: str, source: str) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": f"kubestep-worker-{holder}",
            "labels": {api.LABEL_WORKER: "true"},
            "annotations": {
                api.ANNOTATION_WORKFLOWS: "steps",
                api.ANNOTATION_SOURCES: json.dumps({"steps": source}),
            },
        },
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 300, "renewTime": api.fmt_time(api.now())},
    }


async def test_the_operator_reports_two_live_codes_for_one_workflow_id(
    control_plane: Cluster, namespace: str, client: KubestepClient
) -> None:
    # Two workers that did not refuse (an older version; or both started at once), as their Leases
    # say; neither claims anything here, so the run stays queued.
    for holder, source in (("old", "legacy.flows.steps"), ("new", "kubestep.examples.steps")):
        control_plane.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(_lease(holder, source)))
    h = await client.start("steps", {"count": 1}, name="clash")

    async def marked() -> Any:
        e = await client.get_execution(h.id)
        return next((c for c in e.status.conditions if c.reason == api.Reason.WORKFLOW_CONFLICT), None)

    condition = await until(marked, 20, "the run to be marked WorkflowConflict")
    assert condition.status == "False" and condition.type == api.ConditionType.SCHEDULED
    assert "legacy.flows.steps (worker old)" in condition.message, condition.message
    assert "kubestep.examples.steps (worker new)" in condition.message, condition.message
    events = json.loads(
        control_plane.kubectl(
            "-n", namespace, "get", "events", "--field-selector=involvedObject.name=clash", "-o", "json"
        ).stdout
    )
    assert any(e["reason"] == api.Reason.WORKFLOW_CONFLICT and e["type"] == "Warning" for e in events["items"]), events
    # One of them gone: the run is plainly Pending again.
    control_plane.kubectl("-n", namespace, "delete", "lease", "kubestep-worker-old")
    control_plane.kubectl(
        "-n", namespace, "patch", "lease", "kubestep-worker-new", "--type=merge", "-p",
        json.dumps({"spec": {"renewTime": api.fmt_time(api.now())}}),
    )  # fmt: skip

    async def pending() -> bool:
        e = await client.get_execution(h.id)
        return any(c.reason == api.Reason.PENDING for c in e.status.conditions)

    await until(pending, 20, "the conflict to clear")


def _serving(cluster: Cluster, namespace: str, worker: Proc) -> None:
    """Waits until ``worker`` holds its Lease: from then on the operator knows what it serves."""

    def leased() -> bool:
        lease = f"kubestep-worker-{worker.name}"
        return cluster.kubectl("-n", namespace, "get", "lease", lease, check=False).returncode == 0

    wait_until(leased, 20, what=f"worker {worker.name}'s Lease")


async def test_runs_name_the_queue_that_may_run_them(
    control_plane: Cluster, namespace: str, client: KubestepClient, workers: Any, logs: Path, procs: list[Proc]
) -> None:
    default = workers()
    gpu = start_worker(control_plane.kubeconfig, logs, namespace, env={"KUBESTEP_QUEUE": "gpu"})
    procs.append(gpu)
    _serving(control_plane, namespace, gpu)
    on_gpu = await client.start("steps", {"count": 2, "seconds": 0.05}, queue="gpu")
    plain = await client.start("steps", {"count": 2, "seconds": 0.05})
    assert (await on_gpu.wait(timeout=30)).status.worker == gpu.name
    assert (await plain.wait(timeout=30)).status.worker == default.name
    # A queue nobody serves: it stays queued and says so.
    nowhere = await client.start("steps", {"count": 1}, queue="tpu")

    async def says_no_worker() -> Any:
        e = await client.get_execution(nowhere.id)
        return e.status.reason == api.Reason.NO_WORKER and "on queue 'tpu'" in (e.status.message or "")

    await until(says_no_worker, 20, "the tpu run to say no worker serves its queue")
    # The same workflow id from other code on another queue is no collision.
    other = start_worker(
        control_plane.kubeconfig, logs, namespace, module="tests.security.collide", env={"KUBESTEP_QUEUE": "other"}
    )
    procs.append(other)
    _serving(control_plane, namespace, other)
    assert other.alive()
