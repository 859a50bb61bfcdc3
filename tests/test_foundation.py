"""The foundation everything else relies on, proven against a real API server.

If these fail, nothing above them can be trusted: the WorkflowExecution CRD
(schema, validation rules, short name), owner-reference garbage collection,
real RBAC with service-account tokens, the pinned Kubernetes version, and the
control plane's idempotent `up()`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from kubestep_dev.controlplane import COMPONENTS, ControlPlane
from kubestep_dev.ports import PORT_ENV_VARS, Ports

if TYPE_CHECKING:
    from tests.conftest import Cluster

pytestmark = pytest.mark.cluster

API_VERSION = "kubestep.io/v1alpha1"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _pinned_kubernetes_version() -> str:
    for line in (REPO_ROOT / "hack/controlplane/versions.env").read_text().splitlines():
        if line.startswith("KUBERNETES_VERSION="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("KUBERNETES_VERSION missing from hack/controlplane/versions.env")


def wfx(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "WorkflowExecution",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def apply(cluster: Cluster, obj: dict[str, Any], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("apply", "-f", "-", input=json.dumps(obj), check=check)


def get_json(cluster: Cluster, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
    return result


# 1 ---------------------------------------------------------------------------


def test_workflow_execution_round_trips_through_kubectl(control_plane: Cluster, namespace: str) -> None:
    spec = {
        "workflow": "orders.process",
        "input": {"order": 42, "items": [{"sku": "a", "qty": 2}], "note": "ü", "flag": True},
        "runTimeoutSeconds": 300,
    }
    apply(control_plane, wfx("run-1", namespace, **spec))

    obj = get_json(control_plane, "wfx", "run-1", "-n", namespace)
    assert obj["apiVersion"] == API_VERSION
    assert obj["kind"] == "WorkflowExecution"
    # Every field intact, plus the schema defaults for cancelRequested and events.
    assert obj["spec"] == {**spec, "cancelRequested": False, "events": []}

    # The plural and the fully qualified names resolve to the same object.
    for resource in ("workflowexecutions", "workflowexecutions.kubestep.io", "workflowexecution"):
        same = get_json(control_plane, resource, "run-1", "-n", namespace)
        assert same["metadata"]["uid"] == obj["metadata"]["uid"]
    # And the `kubestep` category lists it.
    listed = control_plane.kubectl("get", "kubestep", "-n", namespace, "-o", "name").stdout.split()
    assert listed == ["workflowexecution.kubestep.io/run-1"]


# 2 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "messages"),
    [
        pytest.param(
            {"workflow": "w", "runTimeoutSeconds": -1},
            ["spec.runTimeoutSeconds", "should be greater than or equal to 1"],
            id="negative-timeout",
        ),
        pytest.param(
            {"workflow": "w", "runTimeoutSeconds": 0},
            ["spec.runTimeoutSeconds", "should be greater than or equal to 1"],
            id="zero-timeout",
        ),
        pytest.param({"input": {"x": 1}}, ["spec.workflow", "Required value"], id="missing-workflow"),
        pytest.param({"workflow": ""}, ["spec.workflow", "at least 1 chars long"], id="empty-workflow"),
    ],
)
def test_invalid_workflow_executions_are_rejected(
    control_plane: Cluster, namespace: str, spec: dict[str, Any], messages: list[str]
) -> None:
    result = apply(control_plane, wfx("bad", namespace, **spec), check=False)
    assert result.returncode != 0, result.stdout
    for message in messages:
        assert message in result.stderr
    assert control_plane.kubectl("get", "wfx", "-n", namespace, "-o", "name").stdout == ""


def test_cancel_requested_cannot_be_set_back_to_false(control_plane: Cluster, namespace: str) -> None:
    apply(control_plane, wfx("cancelled", namespace, workflow="w", cancelRequested=True))

    result = control_plane.kubectl(
        "patch",
        "wfx",
        "cancelled",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"cancelRequested": False}}),
        check=False,
    )
    assert result.returncode != 0
    assert "cancelRequested cannot be set back to false" in result.stderr
    assert get_json(control_plane, "wfx", "cancelled", "-n", namespace)["spec"]["cancelRequested"] is True


def test_immutable_fields(control_plane: Cluster, namespace: str) -> None:
    apply(control_plane, wfx("fixed", namespace, workflow="w", runTimeoutSeconds=10))
    for patch, message in [
        ({"spec": {"workflow": "other"}}, "workflow is immutable"),
        ({"spec": {"runTimeoutSeconds": 20}}, "runTimeoutSeconds is immutable"),
        ({"spec": {"runTimeoutSeconds": None}}, "runTimeoutSeconds cannot be added or removed"),
    ]:
        result = control_plane.kubectl(
            "patch",
            "wfx",
            "fixed",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            json.dumps(patch),
            check=False,
        )
        assert result.returncode != 0, patch
        assert message in result.stderr, (patch, result.stderr)
    # Setting cancelRequested to true is allowed.
    control_plane.kubectl(
        "patch",
        "wfx",
        "fixed",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"cancelRequested": True}}),
    )


# 3 ---------------------------------------------------------------------------


def test_garbage_collector_deletes_dependents_of_a_deleted_execution(control_plane: Cluster, namespace: str) -> None:
    apply(control_plane, wfx("owner", namespace, workflow="w"))
    uid = get_json(control_plane, "wfx", "owner", "-n", namespace)["metadata"]["uid"]
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "namespace": namespace,
            "ownerReferences": [{"apiVersion": API_VERSION, "kind": "WorkflowExecution", "name": "owner", "uid": uid}],
        },
        "data": {"k": "v"},
    }
    apply(control_plane, configmap)
    assert (
        get_json(control_plane, "configmap", "owned", "-n", namespace)["metadata"]["ownerReferences"][0]["uid"] == uid
    )

    control_plane.kubectl("delete", "wfx", "owner", "-n", namespace)
    start = time.monotonic()
    while True:
        left = control_plane.kubectl(
            "get", "configmap", "owned", "-n", namespace, "--ignore-not-found", "-o", "name"
        ).stdout.strip()
        if not left:
            break
        assert time.monotonic() - start < 60, "garbage collector did not delete the owned ConfigMap in 60 s"
        time.sleep(0.25)
    print(f"ConfigMap garbage-collected {time.monotonic() - start:.1f} s after its owner was deleted")


# 4 ---------------------------------------------------------------------------


def test_rbac_is_enforced_for_service_accounts(control_plane: Cluster, make_namespace: Callable[[], str]) -> None:
    namespace, other = make_namespace(), make_namespace()
    for ns in (namespace, other):
        apply(control_plane, wfx("visible", ns, workflow="w"))
    control_plane.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    control_plane.kubectl(
        "create",
        "role",
        "wfx-reader",
        "-n",
        namespace,
        "--verb=get,list",
        "--resource=workflowexecutions.kubestep.io",
    )
    control_plane.kubectl(
        "create",
        "rolebinding",
        "wfx-reader",
        "-n",
        namespace,
        "--role=wfx-reader",
        f"--serviceaccount={namespace}:reader",
    )
    kubeconfig = control_plane.kubeconfig_for_service_account(namespace, "reader")

    def as_reader(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return control_plane.kubectl(*args, input=input, kubeconfig=kubeconfig, check=False)

    whoami = as_reader("auth", "whoami", "-o", "json")
    assert whoami.returncode == 0, whoami.stderr
    user = json.loads(whoami.stdout)["status"]["userInfo"]
    assert user["username"] == f"system:serviceaccount:{namespace}:reader"

    allowed = as_reader("get", "wfx", "visible", "-n", namespace, "-o", "json")
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["spec"]["workflow"] == "w"
    assert as_reader("get", "wfx", "-n", namespace, "-o", "name").stdout.split() == [
        "workflowexecution.kubestep.io/visible"
    ]

    create = as_reader("create", "-f", "-", input=json.dumps(wfx("mine", namespace, workflow="w")))
    assert create.returncode != 0
    assert "forbidden" in create.stderr

    elsewhere = as_reader("get", "wfx", "visible", "-n", other)
    assert elsewhere.returncode != 0
    assert "forbidden" in elsewhere.stderr


# 5 ---------------------------------------------------------------------------


def test_api_server_reports_the_pinned_version(control_plane: Cluster) -> None:
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    server = version["serverVersion"]["gitVersion"]
    if control_plane.is_local:
        pinned = _pinned_kubernetes_version()
        assert server == pinned
        assert version["clientVersion"]["gitVersion"] == pinned
    else:
        assert server.startswith("v1.") and server != "v0.0.0-master+$Format:%H$"


# 6 ---------------------------------------------------------------------------


def test_up_is_idempotent_and_quick(control_plane: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    if control_plane.plane is None:
        pytest.skip("uses an existing cluster (KUBESTEP_TEST_KUBECONFIG): nothing to start")
    plane = control_plane.plane
    before = {name: s.pid for name, s in plane.status().items()}
    assert all(before.values()), before

    start = time.monotonic()
    result = plane.up()
    took = time.monotonic() - start

    assert result.started == ()
    assert result.was_running
    assert not result.crds_applied
    assert took < 2.0, f"second up() took {took:.2f} s"
    after = {name: s.pid for name, s in plane.status().items()}
    assert after == before
    assert all(s.healthy for s in plane.status().values())

    # A second ControlPlane object on the same state directory (as another
    # shell's `kubestep dev up` would be) finds the ports it runs on and sees
    # it running.
    for env in PORT_ENV_VARS.values():
        monkeypatch.delenv(env, raising=False)
    other = ControlPlane(plane.state_dir, progress=None)
    assert other.ports == plane.ports
    assert other.up().started == ()


# The process bookkeeping (no cluster needed) --------------------------------


def test_down_only_stops_processes_it_started(tmp_path: Path) -> None:
    """A pid file pointing at a foreign process (recycled pid) must not get it killed."""
    state = tmp_path / "plane"
    (state / "run").mkdir(parents=True)
    foreign = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        for component in COMPONENTS:
            (state / "run" / f"{component}.pid").write_text(json.dumps({"pid": foreign.pid}))
        plane = ControlPlane(state, ports=Ports.free(), progress=None)
        assert not any(s.running for s in plane.status().values())
        assert plane.down() == []
        assert foreign.poll() is None, "down() killed a process it did not start"
    finally:
        os.kill(foreign.pid, signal.SIGKILL)
        foreign.wait()
