"""No object a tenant or a worker can write stops the operator or hands a step to two workers
(issue 17, findings 1, 3 and 5), on the real control plane with the session's operator.

Each of these stopped the operator before (reproduced at ``132802d``): a Lease renewed "in 9999"
(``renew + timedelta`` overflowed in the informer's handler, which died silently with a green probe),
a ``managedFields`` entry dated 9999 owning ``f:cancelRequested`` (``cancel_time + HEAD_START``), and
a deleted or decoy worker Lease (the run re-queued at once; step 0 ran on two workers). After each, a
plain run in another namespace must still be queued: the operator decides on.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubestep import KubestepClient
from kubestep import _protocol as api

from ..conftest import Cluster
from ..harness import E2E, Proc, completed_steps, start_worker, until, until_phase, wait_until

pytestmark = pytest.mark.skipif(E2E, reason="writes hostile Leases and starts workers: local control plane")

FAR = "9999-12-31T23:59:59.999999Z"


def _lease(name: str, holder: str, renew: str, duration: int = 15, workflows: str = "steps") -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "labels": {api.LABEL_WORKER: "true"},
            "annotations": {api.ANNOTATION_WORKFLOWS: workflows},
        },
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration, "renewTime": renew},
    }


def _apply(cluster: Cluster, ns: str, body: dict[str, Any]) -> None:
    cluster.kubectl("-n", ns, "create", "-f", "-", input=json.dumps(body))


async def _still_deciding(control_plane: Cluster, make_namespace: Callable[[], str]) -> None:
    """A plain run in a fresh namespace is queued (decided on) within seconds."""
    ns = make_namespace()
    async with KubestepClient(namespace=ns, kubeconfig=str(control_plane.kubeconfig)) as other:
        h = await other.start("nobody-serves-this")
        await until_phase(other, h.id, api.Phase.QUEUED, timeout=15)


async def test_hostile_worker_leases_do_not_stop_the_operator(
    control_plane: Cluster, namespace: str, make_namespace: Callable[[], str], client: KubestepClient
) -> None:
    _apply(control_plane, namespace, _lease("kubestep-worker-far", "far", FAR))
    _apply(control_plane, namespace, _lease("kubestep-worker-long", "long", api.fmt_time(api.now()), 2**31 - 1))
    _apply(control_plane, namespace, _lease("decoy", "ghost", FAR, 2**31 - 1))
    await _still_deciding(control_plane, make_namespace)
    # The decoy names "ghost" under another name: it does not keep a run held by ghost alive.
    name = f"held-{uuid.uuid4().hex[:5]}"
    _apply(
        control_plane,
        namespace,
        {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name}, "spec": {"workflow": "steps"}},
    )
    await until_phase(client, name, api.Phase.QUEUED, timeout=15)
    status = {"status": {"phase": "Running", "worker": "ghost", "attempt": 1}}
    control_plane.kubectl(
        "-n", namespace, "patch", "wfx", name, "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )
    e = await until_phase(client, name, api.Phase.QUEUED, timeout=30)  # ghost has no Lease of its own: lost
    assert e.status.reason == api.Reason.WORKER_LOST


async def test_a_cancel_dated_9999_in_managed_fields_does_not_stop_the_operator(
    control_plane: Cluster, namespace: str, make_namespace: Callable[[], str], client: KubestepClient
) -> None:
    """A client may rewrite ``managedFields``: right after a cancel, it dates the entry that owns
    ``f:cancelRequested`` in 9999, while the operator still gives the (silent) holder its head start."""
    _apply(control_plane, namespace, _lease("kubestep-worker-w", "w", api.fmt_time(api.now()), 300))  # a live holder
    forged = [
        {
            "manager": "forger",
            "operation": "Update",
            "apiVersion": api.API_VERSION,
            "time": "9999-12-31T23:59:59Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:cancelRequested": {}, "f:workflow": {}}},
        }
    ]
    landed = None
    for _ in range(3):  # the forgery must land within the head start (1-2 s after the cancel)
        name = f"far-{uuid.uuid4().hex[:5]}"
        run = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": name},
            "spec": {"workflow": "steps"},
        }
        _apply(control_plane, namespace, run)
        await until_phase(client, name, api.Phase.QUEUED, timeout=15)
        status = json.dumps({"status": {"phase": "Running", "worker": "w", "attempt": 1}})
        control_plane.kubectl(
            "-n", namespace, "patch", "wfx", name, "--subresource=status", "--type=merge", "-p", status
        )
        control_plane.kubectl(
            "-n", namespace, "patch", "wfx", name, "--type=merge", "-p", '{"spec":{"cancelRequested":true}}'
        )
        rewrite = json.dumps({"metadata": {"managedFields": forged}})
        control_plane.kubectl("-n", namespace, "patch", "wfx", name, "--type=merge", "-p", rewrite)
        got = json.loads(
            control_plane.kubectl("-n", namespace, "get", "wfx", name, "-o", "json", "--show-managed-fields").stdout
        )
        owners = [m for m in got["metadata"]["managedFields"] if "f:cancelRequested" in str(m.get("fieldsV1"))]
        if [m.get("time") for m in owners] == ["9999-12-31T23:59:59Z"] and (got.get("status") or {}).get(
            "phase"
        ) == "Running":
            landed = name
            break
    assert landed is not None, "the forged managedFields never landed within the head start"
    # The head start counts from now, not from 9999: the holder does not answer, so Cancelling follows.
    await until_phase(client, landed, api.Phase.CANCELLING, timeout=15)
    await _still_deciding(control_plane, make_namespace)


async def test_a_deleted_lease_does_not_hand_its_running_step_to_another_worker(
    control_plane: Cluster, namespace: str, client: KubestepClient, workers: Any, operator: Proc
) -> None:
    # A holder without a known Lease counts as gone once the operator is one lease old: be past that.
    await asyncio.sleep(max(0.0, 16.0 - (time.monotonic() - operator.started)))
    first = workers()
    h = await client.start("steps", {"count": 3, "seconds": 2})
    await until(lambda: _running_on(client, h.id), 15, "the run to start")
    second = workers()  # a second worker that would take the run if it were re-queued
    control_plane.kubectl("-n", namespace, "delete", "lease", f"kubestep-worker-{first.name}")
    e = await until_phase(client, h.id, api.Phase.COMPLETED, timeout=60)
    assert second is not None
    assert e.status.attempt == 1, e.status  # never re-queued
    assert {s.output["worker"] for s in completed_steps(e)} == {first.name}, e.status.steps  # each step ran once, there


async def _running_on(client: KubestepClient, name: str) -> bool:
    e = await client.get_execution(name)
    return e.status.phase == api.Phase.RUNNING


async def test_a_second_live_worker_with_the_same_identity_refuses_to_start(
    control_plane: Cluster, namespace: str, workers: Any, logs: Path, procs: list[Proc]
) -> None:
    first = workers(lease_seconds=3)
    twin = start_worker(control_plane.kubeconfig, logs, namespace, name=first.name, lease_seconds=3)
    procs.append(twin)
    wait_until(lambda: not twin.alive(), 20, what="the twin to refuse to start")
    assert twin.stop(timeout=5) not in (0, None)
    assert "another live worker already uses the identity" in twin.log.read_text()
    assert first.alive()
    await asyncio.sleep(0)


async def test_a_forged_leader_lease_holds_the_operator_off_for_one_lease_at_most(
    control_plane: Cluster, tmp_path: Path, procs: list[Proc]
) -> None:
    """Whoever may write Leases in the operator's namespace (no worker: the admission policy) once
    made every replica stand by for ever: holder "evil", a duration of 68 years. A replica now honours
    no longer a lease than its own (here 3 s), then takes over."""
    from ..test_leader import LEASE, replica, until_holder

    ns = f"lead-{uuid.uuid4().hex[:8]}"  # outside the suite operator's t-*
    control_plane.kubectl("create", "namespace", ns)
    try:
        procs.append(replica(control_plane, tmp_path, ns, "op-a"))
        await until_holder(control_plane, ns, "op-a", 30)
        procs.append(replica(control_plane, tmp_path, ns, "op-b"))  # stands by
        evil = {
            "spec": {"holderIdentity": "evil", "leaseDurationSeconds": 2**31 - 1, "renewTime": api.fmt_time(api.now())}
        }
        control_plane.kubectl("-n", ns, "patch", "lease", "kubestep-operator", "--type=merge", "-p", json.dumps(evil))
        await until_holder(control_plane, ns, "op-b", 10 * LEASE)  # op-a stepped down and left
        async with KubestepClient(namespace=ns, kubeconfig=str(control_plane.kubeconfig)) as client:
            h = await client.start("nobody-serves-this")
            await until_phase(client, h.id, api.Phase.QUEUED, timeout=15)  # the new leader decides
    finally:
        control_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)
