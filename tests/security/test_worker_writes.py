"""What a worker's own token may write (issue 17, findings 2, 3 and 8), on the real apiserver.

Each worker pod holds a ServiceAccount token bound to its pod. Before: with the chart's RBAC alone, one
worker's token patched the operator's leader Lease (every replica stood by), created and deleted other
workers' Leases, rewrote a run another worker held, created arbitrary ConfigMaps and posted Events about
any object. After: the chart's ValidatingAdmissionPolicy (``templates/worker-admission.yaml``) refuses
all of it, and a real worker process on such a token still runs a workflow to the end.

The "before" half of each finding runs first, against the RBAC alone, so the suite shows the hole it
closes; then the policy is applied and the same requests are refused.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubestep import KubestepClient
from kubestep import _protocol as api
from kubestep._protocol import batches, family
from kubestep_dev.locations import find_binary

from ..conftest import Cluster
from ..harness import E2E, Proc, start_worker, until_phase, wait_until
from .tokens import kubeconfig, pod

pytestmark = pytest.mark.skipif(E2E, reason="applies cluster-scoped admission policies of its own")

CHART = Path(__file__).resolve().parents[2] / "charts" / "kubestep"
ALLOWED = "steps"  # the one workflow the worker Deployment "ex" may claim (workers[].workflows)


@dataclass
class Setup:
    namespace: str
    release: str
    manifests: list[dict[str, Any]]
    a: str  # pod names: two replicas of the worker Deployment "ex"
    b: str
    as_a: Path  # A's pod-bound token
    as_b: Path
    unbound: Path  # a token of the same ServiceAccount, bound to no pod


def _render(release: str, namespace: str, *only: str) -> list[dict[str, Any]]:
    args = [str(find_binary("helm")), "template", release, str(CHART), "--namespace", namespace]
    args += ["--set", "workers[0].name=ex", "--set", "workers[0].module=kubestep.examples"]
    args += ["--set", f"workers[0].workflows={{{ALLOWED}}}"]
    for template in only:
        args += ["--show-only", f"templates/{template}"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def setup(control_plane: Cluster, operator: Any) -> Iterator[Setup]:
    release = f"sec{uuid.uuid4().hex[:5]}"
    namespace = f"t-{release}"  # the session's operator serves t-*
    control_plane.kubectl("create", "namespace", namespace)
    try:
        rbac = _render(release, namespace, "worker-rbac.yaml")
        control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac))
        sa = next(d["metadata"]["name"] for d in rbac if d["kind"] == "ServiceAccount")
        deployment = f"{release}-kubestep-worker-ex"
        a, b = (
            pod(control_plane, namespace, f"{deployment}-5d8f9c7b4-aaaaa", sa),
            pod(control_plane, namespace, f"{deployment}-5d8f9c7b4-bbbbb", sa),
        )
        yield Setup(
            namespace,
            release,
            _render(release, namespace, "worker-admission.yaml"),
            a["metadata"]["name"],
            b["metadata"]["name"],
            kubeconfig(control_plane, namespace, sa, a),
            kubeconfig(control_plane, namespace, sa, b),
            kubeconfig(control_plane, namespace, sa, None),
        )
    finally:
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def policy(control_plane: Cluster, setup: Setup) -> Iterator[Setup]:
    manifest = yaml.safe_dump_all(setup.manifests)
    control_plane.kubectl("apply", "-f", "-", input=manifest)
    try:
        # A new policy takes effect within moments: wait until a forged Lease is refused.
        def refused() -> bool:
            name = f"probe-{uuid.uuid4().hex[:5]}"
            done = _lease(control_plane, setup, setup.as_a, name, setup.a)
            if done.returncode == 0:
                control_plane.kubectl("-n", setup.namespace, "delete", "lease", name, check=False)
            return done.returncode != 0

        wait_until(refused, 30, interval=0.5, what="the worker admission policy to take effect")
        yield setup
    finally:
        control_plane.kubectl("delete", "-f", "-", "--ignore-not-found", input=manifest, check=False)


# ----- helpers -------------------------------------------------------------------------------------


def _lease(cluster: Cluster, s: Setup, who: Path, name: str, holder: str, labels: bool = True) -> Any:
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": s.namespace,
            **({"labels": {api.LABEL_WORKER: "true"}} if labels else {}),
        },
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": api.fmt_time(api.now())},
    }
    return cluster.kubectl("-n", s.namespace, "create", "-f", "-", input=json.dumps(body), kubeconfig=who, check=False)


def _run(cluster: Cluster, s: Setup, workflow: str, status: dict[str, Any]) -> str:
    """A run with the given status, written by the admin (as the operator and a worker would)."""
    name = f"r-{uuid.uuid4().hex[:6]}"
    body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name}, "spec": {"workflow": workflow}}
    cluster.kubectl("-n", s.namespace, "create", "-f", "-", input=json.dumps(body))
    cluster.kubectl(
        "-n",
        s.namespace,
        "patch",
        "wfx",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )
    return name


def _status(cluster: Cluster, s: Setup, who: Path, name: str, status: dict[str, Any]) -> Any:
    return cluster.kubectl(
        "-n", s.namespace, "patch", "wfx", name, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}),
        kubeconfig=who, check=False,
    )  # fmt: skip


def _configmap(cluster: Cluster, s: Setup, who: Path, owned_by: dict[str, Any] | None) -> Any:
    meta: dict[str, Any] = {"name": f"cm-{uuid.uuid4().hex[:6]}", "namespace": s.namespace}
    if owned_by is not None:
        meta["labels"] = {api.LABEL_EXECUTION_UID: owned_by["metadata"]["uid"]}
        meta["ownerReferences"] = [
            {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND,
                "name": owned_by["metadata"]["name"],
                "uid": owned_by["metadata"]["uid"],
            }
        ]
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"password": "forged"}}
    return cluster.kubectl("-n", s.namespace, "create", "-f", "-", input=json.dumps(body), kubeconfig=who, check=False)


def _event_about(cluster: Cluster, s: Setup, who: Path, kind: str, name: str) -> Any:
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"ev-{uuid.uuid4().hex[:6]}", "namespace": s.namespace},
        "involvedObject": {"apiVersion": "v1", "kind": kind, "name": name, "namespace": s.namespace},
        "reason": "Spoofed",
        "message": "looks official",
        "type": "Warning",
    }
    return cluster.kubectl("-n", s.namespace, "create", "-f", "-", input=json.dumps(body), kubeconfig=who, check=False)


def _leader_lease(cluster: Cluster, s: Setup) -> None:
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "kubestep-operator", "namespace": s.namespace},
        "spec": {"holderIdentity": "operator-0", "leaseDurationSeconds": 15, "renewTime": api.fmt_time(api.now())},
    }
    cluster.kubectl("-n", s.namespace, "apply", "-f", "-", input=json.dumps(body))


def _get(cluster: Cluster, s: Setup, *what: str) -> dict[str, Any]:
    return dict(json.loads(cluster.kubectl("-n", s.namespace, "get", *what, "-o", "json").stdout))


def _refused(done: Any, *words: str) -> None:
    assert done.returncode != 0, "the apiserver accepted it"
    assert "denied request" in done.stderr or "forbidden" in done.stderr.lower(), done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


EVIL = json.dumps({"spec": {"holderIdentity": "evil", "leaseDurationSeconds": 2147483647}})


# ----- before: the chart's RBAC alone -------------------------------------------------------------


def test_before_the_policy_a_worker_token_could_take_the_operators_lease_and_forge_runs(
    control_plane: Cluster, setup: Setup
) -> None:
    """Reproduces findings 2, 3 and 8 against the RBAC alone (the chart before this change)."""
    s = setup
    _leader_lease(control_plane, s)
    patch = ["-n", s.namespace, "patch", "lease", "kubestep-operator", "--type=merge", "-p", EVIL]
    assert control_plane.kubectl(*patch, kubeconfig=s.as_a, check=False).returncode == 0  # finding 2
    assert _lease(control_plane, s, s.as_a, f"kubestep-worker-{s.b}", s.b).returncode == 0  # finding 3: B's Lease
    held = _run(control_plane, s, "other", {"phase": "Waiting", "worker": s.b})
    forged = {"phase": "Completed", "result": {"forged": True}}
    assert _status(control_plane, s, s.as_a, held, forged).returncode == 0  # finding 8: another's run
    assert _configmap(control_plane, s, s.as_a, None).returncode == 0  # finding 8: any ConfigMap
    assert _event_about(control_plane, s, s.as_a, "ConfigMap", "anything").returncode == 0  # spoofed Events
    control_plane.kubectl("-n", s.namespace, "delete", "lease", f"kubestep-worker-{s.b}", check=False)


# ----- after: the chart's ValidatingAdmissionPolicy -------------------------------------------------


def test_a_worker_may_not_touch_the_operators_leader_lease(control_plane: Cluster, policy: Setup) -> None:
    s = policy
    _leader_lease(control_plane, s)
    patch = ["-n", s.namespace, "patch", "lease", "kubestep-operator", "--type=merge", "-p", EVIL]
    _refused(control_plane.kubectl(*patch, kubeconfig=s.as_a, check=False), "only its own Lease")
    delete = ["-n", s.namespace, "delete", "lease", "kubestep-operator"]
    _refused(control_plane.kubectl(*delete, kubeconfig=s.as_a, check=False))
    assert _get(control_plane, s, "lease", "kubestep-operator")["spec"]["holderIdentity"] == "operator-0"


def test_a_worker_writes_only_its_own_lease(control_plane: Cluster, policy: Setup) -> None:
    s = policy
    own = f"kubestep-worker-{s.a}"
    assert _lease(control_plane, s, s.as_a, own, s.a).returncode == 0
    renew = json.dumps({"spec": {"renewTime": api.fmt_time(api.now())}})
    assert (
        control_plane.kubectl(
            "-n", s.namespace, "patch", "lease", own, "--type=merge", "-p", renew, kubeconfig=s.as_a
        ).returncode
        == 0
    )
    # Another worker's name, a decoy naming another holder, or its own name with another holder: refused.
    _refused(_lease(control_plane, s, s.as_a, f"kubestep-worker-{s.b}", s.b), f"kubestep-worker-{s.a}")
    _refused(_lease(control_plane, s, s.as_a, "decoy", s.b))
    takeover = json.dumps({"spec": {"holderIdentity": s.b}})
    _refused(
        control_plane.kubectl(
            "-n", s.namespace, "patch", "lease", own, "--type=merge", "-p", takeover, kubeconfig=s.as_a, check=False
        )
    )
    # B may not delete A's Lease (a deleted Lease once ran a step on two workers); A may delete its own.
    _refused(control_plane.kubectl("-n", s.namespace, "delete", "lease", own, kubeconfig=s.as_b, check=False))
    assert control_plane.kubectl("-n", s.namespace, "delete", "lease", own, kubeconfig=s.as_a).returncode == 0


def test_a_token_not_bound_to_a_pod_is_refused(control_plane: Cluster, policy: Setup) -> None:
    s = policy
    _refused(_lease(control_plane, s, s.unbound, f"kubestep-worker-{s.a}", s.a), "bound to the pod")


def test_a_worker_writes_only_the_runs_it_holds_or_claims(control_plane: Cluster, policy: Setup) -> None:
    s = policy
    theirs = _run(control_plane, s, ALLOWED, {"phase": "Waiting", "worker": s.b})
    _refused(
        _status(control_plane, s, s.as_a, theirs, {"phase": "Completed", "result": {"forged": True}}), f"held by: {s.b}"
    )
    assert "result" not in _get(control_plane, s, "wfx", theirs)["status"]
    # A holds a live Lease, so the operator does not re-queue what A claims below.
    assert _lease(control_plane, s, s.as_a, f"kubestep-worker-{s.a}", s.a).returncode == 0
    queued = _run(control_plane, s, ALLOWED, {"phase": "Queued"})
    _refused(_status(control_plane, s, s.as_a, queued, {"phase": "Running", "worker": s.b}))  # claim for another
    assert _status(control_plane, s, s.as_a, queued, {"phase": "Running", "worker": s.a}).returncode == 0  # for itself
    assert _status(control_plane, s, s.as_a, queued, {"stepsCompleted": 1}).returncode == 0  # now it holds it
    _refused(_status(control_plane, s, s.as_b, queued, {"phase": "Completed"}))
    spec = ["-n", s.namespace, "patch", "wfx", queued, "--type=merge", "-p", '{"spec":{"cancelRequested":true}}']
    assert control_plane.kubectl(*spec, kubeconfig=s.as_a, check=False).returncode != 0  # RBAC: never the spec
    control_plane.kubectl("-n", s.namespace, "delete", "lease", f"kubestep-worker-{s.a}", kubeconfig=s.as_a)


def test_a_worker_deployment_claims_only_its_workflows(control_plane: Cluster, policy: Setup) -> None:
    s = policy
    other = _run(control_plane, s, "approval", {"phase": "Queued"})
    _refused(
        _status(control_plane, s, s.as_a, other, {"phase": "Running", "worker": s.a}),
        "may claim only the workflows steps",
    )


def test_a_worker_deployment_claims_only_runs_of_its_queue(control_plane: Cluster, policy: Setup) -> None:
    s = policy
    body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": f"q-{uuid.uuid4().hex[:6]}"}}
    body["spec"] = {"workflow": ALLOWED, "queue": "gpu"}
    control_plane.kubectl("-n", s.namespace, "create", "-f", "-", input=json.dumps(body))
    name = body["metadata"]["name"]
    queued = json.dumps({"status": {"phase": "Queued"}})
    control_plane.kubectl("-n", s.namespace, "patch", "wfx", name, "--subresource=status", "--type=merge", "-p", queued)
    claim = {"phase": "Running", "worker": s.a}
    _refused(_status(control_plane, s, s.as_a, name, claim), "may claim only runs of the default queue")


def test_a_worker_creates_only_journal_configmaps_and_events_about_runs(control_plane: Cluster, policy: Setup) -> None:
    s = policy
    _refused(_configmap(control_plane, s, s.as_a, None), "journal ConfigMaps")
    run = _get(control_plane, s, "wfx", _run(control_plane, s, ALLOWED, {"phase": "Queued"}))
    assert _configmap(control_plane, s, s.as_a, run).returncode == 0
    _refused(_event_about(control_plane, s, s.as_a, "ConfigMap", "anything"), "Events about a WorkflowExecution")
    assert _event_about(control_plane, s, s.as_a, api.KIND, run["metadata"]["name"]).returncode == 0


def test_a_worker_creates_only_child_runs(control_plane: Cluster, policy: Setup) -> None:
    """``ctx.step.invoke``: a worker's token may create a run owned by a run (and labelled with its
    parent); any other run, or a change to one, stays refused."""
    s = policy
    parent = _get(control_plane, s, "wfx", _run(control_plane, s, ALLOWED, {"phase": "Running", "worker": s.a}))
    child = family.child_body(parent, "k", ALLOWED, None)
    made = control_plane.kubectl(
        "-n", s.namespace, "create", "-f", "-", input=json.dumps(child), kubeconfig=s.as_a, check=False
    )
    assert made.returncode == 0, made.stderr
    loose = {**child, "metadata": {"name": f"loose-{uuid.uuid4().hex[:6]}", "namespace": s.namespace}}
    _refused(
        control_plane.kubectl(
            "-n", s.namespace, "create", "-f", "-", input=json.dumps(loose), kubeconfig=s.as_a, check=False
        ),
        "it may only create a child run",
    )
    unlabelled = json.loads(json.dumps(child))
    unlabelled["metadata"]["name"] += "-x"
    del unlabelled["metadata"]["labels"][family.LABEL_PARENT]
    _refused(
        control_plane.kubectl(
            "-n", s.namespace, "create", "-f", "-", input=json.dumps(unlabelled), kubeconfig=s.as_a, check=False
        ),
        "it may only create a child run",
    )
    name = child["metadata"]["name"]
    spec = ["-n", s.namespace, "patch", "wfx", name, "--type=merge", "-p", '{"spec":{"cancelRequested":true}}']
    assert control_plane.kubectl(*spec, kubeconfig=s.as_a, check=False).returncode != 0  # RBAC: never the spec


def _batch(cluster: Cluster, s: Setup, who: Path, worker: str, run: dict[str, Any]) -> Any:
    entry = {"lsn": 1, "record": {"key": "forged", "kind": "Run", "state": "Completed", "output": "forged"}}
    runs = [{"name": run["metadata"]["name"], "uid": run["metadata"]["uid"], "attempt": 1, "entries": [entry]}]
    body = {
        "apiVersion": api.API_VERSION,
        "kind": batches.BATCH_KIND,
        "metadata": {"name": f"b-{uuid.uuid4().hex[:6]}", "namespace": s.namespace},
        "spec": {"worker": worker, "runs": runs},
    }
    return cluster.kubectl("-n", s.namespace, "create", "-f", "-", input=json.dumps(body), kubeconfig=who, check=False)


def test_a_worker_creates_step_batches_only_as_itself_and_never_changes_or_deletes_one(
    control_plane: Cluster, policy: Setup
) -> None:
    """A claim counts only the batches of the run's holder (``batches.counted``): so no worker may
    write one in another's name, or a token of worker b could pass off step outputs for a's runs."""
    s = policy
    run = _get(control_plane, s, "wfx", _run(control_plane, s, ALLOWED, {"phase": "Running", "worker": s.a}))
    _refused(_batch(control_plane, s, s.as_b, s.a, run), "may only create StepBatches it writes itself")
    own = _batch(control_plane, s, s.as_b, s.b, run)
    assert own.returncode == 0, own.stderr
    name = own.stdout.split()[0]  # "stepbatch.kubestep.io/b-… created"
    done = control_plane.kubectl("-n", s.namespace, "delete", name, kubeconfig=s.as_b, check=False)
    assert done.returncode != 0, "a worker never deletes a batch (the operator collects them)"


async def test_a_worker_on_its_pod_token_runs_a_workflow_to_the_end_under_the_policy(
    control_plane: Cluster, policy: Setup, logs: Path
) -> None:
    """The policy refuses only what a worker never needs: claim, steps, Events, its Lease, release."""
    s = policy
    proc: Proc = start_worker(s.as_a, logs, s.namespace, name=s.a, lease_seconds=3)
    try:
        async with KubestepClient(namespace=s.namespace, kubeconfig=str(control_plane.kubeconfig)) as client:
            h = await client.start(ALLOWED, {"count": 3, "seconds": 0.05})
            e = await until_phase(client, h.id, api.Phase.COMPLETED, timeout=60)
            assert e.status.worker == s.a and e.status.steps_completed == 3
    finally:
        proc.stop()
    # The only refusals: claims of the other test runs lying in this namespace whose workflows the
    # worker's module serves but its Deployment may not claim (the policy doing its job).
    log = proc.log.read_text()
    denied = [line for line in log.splitlines() if "denied request" in line]
    assert all("may claim only the workflows" in line for line in denied), "\n".join(denied)
    assert (
        control_plane.kubectl("-n", s.namespace, "get", "lease", f"kubestep-worker-{s.a}", check=False).returncode != 0
    )
