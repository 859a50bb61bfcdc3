"""What only real pods can show (issue 11): the chart's operator and workers as pods on a kubelet.

Run by `make node-e2e` (hack/node/e2e.sh) against the chart installed on the node
(hack/node/up.sh), with KUBESTEP_TEST_PODS=1; the default suite does not collect
this directory. The release is `kubestep` in namespace KUBESTEP_E2E_NAMESPACE
with charts/kubestep/ci/node-values.yaml: two operator replicas with leader
election, two `examples` worker pods, one `myflows` pod of the user image, and
the HTTP server (`kubestep server`, issue 20) behind its Service.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from kubestep import KubestepClient
from kubestep import _protocol as api

from ..harness import completed_steps, until, until_phase

NAMESPACE = os.environ.get("KUBESTEP_E2E_NAMESPACE", "kubestep")
RELEASE = "kubestep"
WORKER_LABELS = "app.kubernetes.io/component=worker,kubestep.io/worker=examples"
OPERATOR_LABELS = "app.kubernetes.io/component=operator"
SERVER_LABELS = "app.kubernetes.io/component=server"
RESULTS = os.environ.get("KUBESTEP_NODE_RESULTS")  # where the measured figures go (JSON lines)

pytestmark = pytest.mark.cluster


def _record(name: str, **figures: Any) -> None:
    if RESULTS:
        with Path(RESULTS).open("a") as f:
            f.write(json.dumps({"test": name, **figures}) + "\n")


def kubectl_json(cluster: Any, *args: str) -> Any:
    return json.loads(cluster.kubectl("-n", NAMESPACE, *args, "-o", "json").stdout)


def pods(cluster: Any, labels: str) -> list[dict[str, Any]]:
    items = kubectl_json(cluster, "get", "pods", "-l", labels)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


async def until_ready(cluster: Any, labels: str, count: int, timeout: float = 90) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        found = [p for p in pods(cluster, labels) if ready(p)]
        return found if len(found) >= count else None

    result: list[dict[str, Any]] = await until(check, timeout, f"{count} ready pods with {labels}")
    return result


def lease(cluster: Any, name: str) -> dict[str, Any] | None:
    got = cluster.kubectl("-n", NAMESPACE, "get", "lease", name, "-o", "json", check=False)
    return json.loads(got.stdout) if got.returncode == 0 else None


async def until_running_on_a_pod(client: KubestepClient, name: str, steps: int) -> Any:
    async def check() -> Any:
        e = await client.get_execution(name)
        return e if e.status.worker and len(completed_steps(e)) >= steps else None

    return await until(check, 60, f"{name} running with {steps} steps done")


async def held_by_a_pod(client: KubestepClient, cluster: Any, name: str, steps: int) -> str:
    """The worker pod running `name` once `steps` are done; its Lease is owned by the Pod (downward API's POD_UID)."""
    holder: str = (await until_running_on_a_pod(client, name, steps)).status.worker
    pod = kubectl_json(cluster, "get", "pod", holder)
    owner = lease(cluster, f"kubestep-worker-{holder}")
    assert owner is not None
    assert owner["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
    return holder


@pytest.fixture
async def both_workers(control_plane: Any) -> list[dict[str, Any]]:
    """Both example worker pods Ready (a test before may have replaced one)."""
    return await until_ready(control_plane, WORKER_LABELS, 2)


async def test_a_deleted_worker_pod_finishes_its_step_hands_the_run_back_and_drops_its_lease(
    client: KubestepClient, control_plane: Any, both_workers: Any
) -> None:
    h = await client.start("steps", {"count": 6, "seconds": 1.5})
    holder = await held_by_a_pod(client, control_plane, h.id, 1)

    # The kubelet sends SIGTERM; the chart gives the pod 60 s.
    deleted_at, deleted_wall = time.monotonic(), dt.datetime.now(dt.UTC)
    control_plane.kubectl("-n", NAMESPACE, "delete", "pod", holder, "--wait=false")

    async def moved() -> Any:
        e = await h.status()
        return e if e.status.worker not in (None, holder) else None

    e = await until(moved, 60, "the run to move to another worker pod")
    moved_after = time.monotonic() - deleted_at
    by_holder = [s for s in completed_steps(e) if s.output["worker"] == holder]
    # The step in flight at SIGTERM finished on the deleted pod (its record says so: it was not cut
    # off and redone elsewhere), and no step started there once SIGTERM could have arrived (the
    # kubelet sends it within moments of the delete; a boundary may fall in between).
    assert any(s.finished_at and s.finished_at > deleted_wall for s in by_holder), by_holder
    slack = dt.timedelta(seconds=1)
    assert all(s.started_at and s.started_at < deleted_wall + slack for s in by_holder), by_holder
    result = await h.result(timeout=60)
    assert len(set(result["tokens"])) == 6
    e = await h.status()
    assert {s.output["worker"] for s in completed_steps(e)} == {holder, e.status.worker}
    # A clean shutdown deletes the pod's Lease itself.
    await until(lambda: _gone(control_plane, f"kubestep-worker-{holder}"), 30, "the deleted pod's lease to go")
    _record("worker-pod-deleted", handed_back_and_claimed_seconds=round(moved_after, 2))


async def test_a_worker_pod_killed_mid_step_loses_its_lease_to_the_garbage_collector(
    client: KubestepClient, control_plane: Any, both_workers: Any
) -> None:
    # A step longer than a 1 s grace period: the kubelet SIGKILLs the worker while it waits for
    # the step, so nothing releases the Lease; its owner reference to the Pod does.
    h = await client.start("steps", {"count": 3, "seconds": 6})
    holder = await held_by_a_pod(client, control_plane, h.id, 0)
    name = f"kubestep-worker-{holder}"
    control_plane.kubectl("-n", NAMESPACE, "delete", "pod", holder, "--grace-period=1", "--wait=false")
    start = time.monotonic()
    await until(lambda: _gone(control_plane, name), 60, f"the garbage collector to delete lease {name}")
    collected = time.monotonic() - start
    # The operator calls the worker lost (its Lease is gone) and the run completes on another pod.
    await h.result(timeout=90)
    e = await h.status()
    assert e.status.attempt >= 2 and e.status.worker != holder
    assert any(s.output["worker"] != holder for s in completed_steps(e))
    _record("worker-pod-killed", lease_collected_seconds=round(collected, 2))


async def _gone(cluster: Any, lease_name: str) -> bool:
    return lease(cluster, lease_name) is None


async def test_a_new_operator_pod_enforces_a_pending_deadline_and_a_pending_wait(
    client: KubestepClient, control_plane: Any, both_workers: Any
) -> None:
    await until_ready(control_plane, OPERATOR_LABELS, 2)
    # A run in a 60 s step with a 15 s budget: at its deadline only an operator writes Cancelling
    # (the worker waits for the step's boundary). And a run in a timed wait: no worker holds it,
    # only an operator wakes it.
    stuck = await client.start(
        "steps", {"count": 3, "seconds": 60}, run_timeout_seconds=15, cancel_grace_period_seconds=2
    )
    waiting = await client.start("wait-then-finish", {"seconds": 0.1, "wait_seconds": 10})
    await until_phase(client, waiting.id, api.Phase.WAITING, timeout=30)
    e = await until_running_on_a_pod(client, stuck.id, 0)
    deadline = e.status.deadline
    old = {p["metadata"]["name"] for p in pods(control_plane, OPERATOR_LABELS)}
    # Every operator pod goes, before either is due: only pods that rebuild both from status remain.
    deleted_at = time.monotonic()
    control_plane.kubectl("-n", NAMESPACE, "delete", "pods", "-l", OPERATOR_LABELS, "--wait=false")
    new = await until_ready(control_plane, OPERATOR_LABELS, 1)
    replaced = time.monotonic() - deleted_at
    assert not old & {p["metadata"]["name"] for p in new}
    assert (await client.get_execution(stuck.id)).status.phase == api.Phase.RUNNING  # still pending

    e = await until_phase(client, stuck.id, api.Phase.CANCELLING, api.Phase.CANCELLED, timeout=60)
    assert e.status.cancellation and e.status.cancellation.reason == api.StopReason.RUN_TIMEOUT, e.status
    assert e.status.cancellation.requested_at == deadline
    e = await until_phase(client, stuck.id, api.Phase.CANCELLED, timeout=30)
    assert e.status.cancellation and e.status.cancellation.reason == api.StopReason.RUN_TIMEOUT, e.status
    assert not completed_steps(e)  # the 60 s step was cut off after the 2 s grace
    w = await until_phase(client, waiting.id, api.Phase.COMPLETED, timeout=60)
    assert w.status.result == "done" and [s.key for s in completed_steps(w)] == ["before", "pause", "after"]
    leader = (lease(control_plane, f"{RELEASE}-operator") or {}).get("spec", {}).get("holderIdentity")
    assert leader in {p["metadata"]["name"] for p in pods(control_plane, OPERATOR_LABELS)}
    woke = next(s for s in w.status.steps if s.key == "after").started_at
    wake_at = next(s for s in w.status.steps if s.key == "pause").wake_at
    assert woke and wake_at
    _record(
        "operator-pods-deleted",
        new_operator_ready_seconds=round(replaced, 2),
        wait_resumed_after_wake_at_seconds=round((woke - wake_at).total_seconds(), 2),
    )


async def test_every_container_runs_as_10001_read_only_under_restricted_pod_security(control_plane: Any) -> None:
    ns = kubectl_json(control_plane, "get", "namespace", NAMESPACE)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    probe = (
        "import os, json\n"
        "caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0]\n"
        "try:\n    open('/app/x', 'w'); root = 'writable'\nexcept OSError as e:\n    root = e.strerror\n"
        "open('/tmp/ok', 'w').write('ok')\n"
        "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'caps': caps, 'root': root,\n"
        "                  'apiserver': os.environ.get('KUBERNETES_SERVICE_HOST'),\n"
        "                  'pid1': open('/proc/1/cmdline').read().split(chr(0))[:3]}))\n"
    )
    service = json.loads(control_plane.kubectl("-n", "default", "get", "service", "kubernetes", "-o", "json").stdout)
    all_pods = pods(control_plane, f"app.kubernetes.io/instance={RELEASE}")
    assert len(all_pods) >= 5, [p["metadata"]["name"] for p in all_pods]
    for pod in all_pods:
        name = pod["metadata"]["name"]
        assert pod["status"]["phase"] == "Running" and ready(pod), name
        # Ready through the kubelet's own HTTP probes (the operator's kopf /healthz, a worker's /readyz).
        container = pod["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] in ("/healthz", "/readyz"), name
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        got = control_plane.kubectl("-n", NAMESPACE, "exec", name, "--", "python3", "-c", probe)
        seen = json.loads(got.stdout)
        assert seen["uid"] == 10001 and seen["gid"] == 10001, (name, seen)
        assert int(seen["caps"], 16) == 0, (name, seen)  # every capability dropped
        assert seen["root"] == "Read-only file system", (name, seen)
        # In-cluster configuration: the API server through the `kubernetes` Service (kube-proxy).
        assert seen["apiserver"] == service["spec"]["clusterIP"], (name, seen)
        # The container's first process is kubestep itself, so the kubelet's SIGTERM reaches it.
        assert any(arg.endswith("/kubestep") for arg in seen["pid1"][:2]), (name, seen)
    # Admission, too: a privileged pod is refused in this namespace.
    bad = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged-probe"},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "localhost/kubestep-pause:1",
                    "imagePullPolicy": "Never",
                    "securityContext": {"privileged": True},
                }
            ]
        },
    }
    refused = control_plane.kubectl("-n", NAMESPACE, "create", "-f", "-", input=json.dumps(bad), check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, refused.stderr


async def test_a_user_image_built_from_the_project_image_runs_its_own_workflow(
    client: KubestepClient, control_plane: Any
) -> None:
    user_pods = await until_ready(control_plane, "kubestep.io/worker=myflows", 1)
    h = await client.start("myflows-greet", {"name": "pod"})
    result = await h.result(timeout=60)
    assert result["greeting"] == "hello, pod"
    assert result["file"] == "/app/myflows/__init__.py"
    assert result["pod"] in {p["metadata"]["name"] for p in user_pods}
    image = user_pods[0]["spec"]["containers"][0]["image"]
    assert image.startswith("localhost/kubestep-myflows"), image


async def test_kubectl_patch_cancels_a_run_executing_in_a_pod(
    client: KubestepClient, control_plane: Any, both_workers: Any
) -> None:
    latencies = []
    for _ in range(10):
        h = await client.start("until-cancelled", {"seconds": 0.2})
        await until_running_on_a_pod(client, h.id, 1)
        patch = json.dumps({"spec": {"cancelRequested": True}})
        sent = time.monotonic()
        control_plane.kubectl("-n", NAMESPACE, "patch", "wfx", h.id, "--type", "merge", "-p", patch)
        accepted = time.monotonic()
        while (e := await client.get_execution(h.id)).status.phase != api.Phase.CANCELLED:
            assert time.monotonic() - sent < 30, e.status
            await asyncio.sleep(0.01)
        latencies.append((time.monotonic() - accepted) * 1000)
        assert e.status.reason == api.StopReason.REQUESTED, e.status
        assert e.status.cancellation.requested_by == "kubectl-patch", e.status.cancellation
        assert all(s.state == "Completed" for s in e.status.steps), e.status.steps  # the step in flight finished
    p50 = statistics.median(latencies)
    _record("kubectl-patch-cancel", runs=len(latencies), p50_ms=round(p50, 1), max_ms=round(max(latencies), 1))
    print(f"cancel by kubectl patch, pod worker: p50 {p50:.0f} ms, max {max(latencies):.0f} ms (n={len(latencies)})")


# Run inside a worker pod (the image's python3): GET each URL of the JSON on stdin with its token (or
# none) through the server's Service, and print what came back.
_CALL_THE_SERVER = """
import json, sys, urllib.error, urllib.request
answers = []
for url, token in json.load(sys.stdin):
    headers = {"Authorization": "Bearer " + token} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            status, body, challenge = r.status, r.read().decode(), None
    except urllib.error.HTTPError as e:
        status, body, challenge = e.code, e.read().decode(), e.headers.get("WWW-Authenticate")
    answers.append({"status": status, "body": body[:4000], "challenge": challenge})
print(json.dumps(answers))
"""


async def test_the_http_server_is_ready_through_its_probes_and_answers_through_its_service_from_a_pod(
    client: KubestepClient, control_plane: Any
) -> None:
    """The chart's server pod (server.enabled) Ready through the kubelet's HTTP probes; from a worker
    pod, through the Service's cluster IP (kube-proxy; the node has no cluster DNS), the API answers
    as the caller: 200 with the runs for a ServiceAccount token that may list them, 403 for a token
    without RBAC, 401 without a token or with a garbage one. The server's own ServiceAccount is
    bound to nothing, so only the callers' tokens can have listed anything."""
    (server,) = await until_ready(control_plane, SERVER_LABELS, 1)
    container = server["spec"]["containers"][0]
    assert container["args"][:2] == ["server", f"--namespace={NAMESPACE}"], container["args"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert server["spec"]["serviceAccountName"] == f"{RELEASE}-server"
    service = kubectl_json(control_plane, "get", "service", f"{RELEASE}-server")
    assert service["spec"]["type"] == "ClusterIP"
    base = f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"
    caller = (await until_ready(control_plane, WORKER_LABELS, 1))[0]

    tag = uuid.uuid4().hex[:8]
    reader, stranger = f"api-reader-{tag}", f"api-stranger-{tag}"
    h = await client.start("steps", {"count": 1, "seconds": 0.01}, labels={"e2e-server": tag})
    created: list[tuple[str, str]] = []
    try:
        for who in (reader, stranger):
            control_plane.kubectl("-n", NAMESPACE, "create", "serviceaccount", who)
            created.append(("serviceaccount", who))
        control_plane.kubectl(
            "-n", NAMESPACE, "create", "role", reader, "--verb=get,list,watch", "--resource=workflowexecutions"
        )
        created.append(("role", reader))
        control_plane.kubectl(
            "-n",
            NAMESPACE,
            "create",
            "rolebinding",
            reader,
            f"--role={reader}",
            f"--serviceaccount={NAMESPACE}:{reader}",
        )
        created.append(("rolebinding", reader))
        tokens = {
            who: control_plane.kubectl("-n", NAMESPACE, "create", "token", who, "--duration=10m").stdout.strip()
            for who in (reader, stranger)
        }
        runs = f"{base}/api/v1/executions?namespace={NAMESPACE}&labelSelector=e2e-server%3D{tag}"
        calls = [
            (f"{base}/healthz", None),
            (f"{base}/readyz", None),
            (runs, tokens[reader]),
            (runs, None),
            (runs, "not-a-token"),
            (runs, tokens[stranger]),
        ]

        last: list[Any] = []

        async def through_the_service() -> list[dict[str, Any]] | None:
            got = control_plane.kubectl(
                *("-n", NAMESPACE, "exec", "-i", caller["metadata"]["name"]),
                *("--", "python3", "-c", _CALL_THE_SERVER),
                input=json.dumps(calls),
                check=False,
            )
            last[:] = [got.returncode, got.stdout[-2000:], got.stderr[-2000:]]
            answers: list[dict[str, Any]] | None = json.loads(got.stdout) if got.returncode == 0 else None
            if answers and answers[2]["status"] == 200:
                return answers
            await asyncio.sleep(0.5)  # the new RoleBinding may lag, or the Service's endpoints
            return None

        try:
            answers = await until(through_the_service, 30, "the reader's token to list runs through the server")
        except AssertionError as err:
            logs = control_plane.kubectl("-n", NAMESPACE, "logs", server["metadata"]["name"], check=False).stdout
            raise AssertionError(f"{err}; last exec: {last}; server log:\n{logs[-3000:]}") from None
        healthz, readyz, listed, anonymous, garbage, refused = answers
        assert (healthz["status"], readyz["status"]) == (200, 200), answers
        body = json.loads(listed["body"])
        assert body["namespace"] == NAMESPACE and [e["id"] for e in body["items"]] == [h.id], body
        assert body["items"][0]["workflow"] == "steps"
        assert anonymous["status"] == 401 and (anonymous["challenge"] or "").startswith("Bearer"), anonymous
        assert garbage["status"] == 401, garbage
        assert refused["status"] == 403, refused
        assert f"system:serviceaccount:{NAMESPACE}:{stranger}" in refused["body"], refused
        _record("http-server-through-service", statuses=[a["status"] for a in answers])
    finally:
        for kind, name in reversed(created):
            control_plane.kubectl("-n", NAMESPACE, "delete", kind, name, "--ignore-not-found", check=False)
