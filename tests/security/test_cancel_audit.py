"""Who cancelled a run cannot be forged (issue 17, finding 6), on the real apiserver.

Before: the operator and the workers copied the ``kubestep.io/cancel-requested-by`` annotation into
``status.cancellation.requestedByUser`` whether or not the chart's audit policy was installed, so one
patch recorded ``system:admin``; with the policy on, re-annotating after the cancel also won, and the
mutation policy's ``failurePolicy: Ignore`` fell back to the same.

After: the annotation is copied only where the installation says the policies vouch for it
(``KUBESTEP_CANCEL_AUDIT``, set by the chart with ``cancelAudit.enabled``), and a
ValidatingAdmissionPolicy (``failurePolicy: Fail``) lets only the cancelling request write it, naming
its own user, never to change or remove it afterwards.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubestep import _protocol as api
from kubestep_dev.locations import find_binary

from ..conftest import Cluster
from ..harness import E2E, Proc, start_operator, wait_until

pytestmark = pytest.mark.skipif(E2E, reason="applies cluster-scoped admission policies and runs operators of its own")

CHART = Path(__file__).resolve().parents[2] / "charts" / "kubestep"
KEY = api.ANNOTATION_CANCELLED_BY


def _policies(release: str, namespace: str) -> list[dict[str, Any]]:
    args = [str(find_binary("helm")), "template", release, str(CHART), "--namespace", namespace]
    args += ["--set", "cancelAudit.enabled=true", "--show-only", "templates/cancel-audit.yaml"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _namespace_with_operator(cluster: Cluster, logs: Path, procs: list[Proc], audited: bool) -> tuple[str, Path, str]:
    """A namespace outside the session operator's ``t-*`` with an operator of its own, and a user
    (ServiceAccount) that may only create, get and patch runs there."""
    ns = f"sec-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("-n", ns, "create", "serviceaccount", "alice")
    cluster.kubectl(
        "-n", ns, "create", "role", "runs", "--verb=create,get,patch", "--resource=workflowexecutions.kubestep.io"
    )
    cluster.kubectl("-n", ns, "create", "rolebinding", "alice", "--role=runs", f"--serviceaccount={ns}:alice")
    env = {"KUBESTEP_CANCEL_AUDIT": "true" if audited else "false"}
    procs.append(start_operator(cluster.kubeconfig, logs, namespaces=[ns], env=env))
    return ns, cluster.kubeconfig_for_service_account(ns, "alice"), f"system:serviceaccount:{ns}:alice"


def _create(cluster: Cluster, ns: str, who: Path, annotations: dict[str, str] | None = None) -> str:
    name = f"r-{uuid.uuid4().hex[:6]}"
    meta: dict[str, Any] = {"name": name, **({"annotations": annotations} if annotations else {})}
    body = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": meta,
        "spec": {"workflow": "nobody-serves-this"},
    }
    cluster.kubectl("-n", ns, "create", "-f", "-", input=json.dumps(body), kubeconfig=who)
    return name


def _patch(cluster: Cluster, ns: str, who: Path, name: str, patch: dict[str, Any]) -> Any:
    return cluster.kubectl(
        "-n", ns, "patch", "wfx", name, "--type=merge", "-p", json.dumps(patch), kubeconfig=who, check=False
    )


def _cancelled(cluster: Cluster, ns: str, name: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        obj = json.loads(cluster.kubectl("-n", ns, "get", "wfx", name, "-o", "json").stdout)
        status = obj.get("status") or {}
        return dict(status["cancellation"]) if status.get("phase") == api.Phase.CANCELLED else None

    return check


FORGED = {"metadata": {"annotations": {KEY: "system:admin"}}, "spec": {"cancelRequested": True, "cancelReason": "x"}}


def test_without_the_audit_policies_the_annotation_is_nobodys_word(
    control_plane: Cluster, logs: Path, procs: list[Proc]
) -> None:
    """The chart's default (cancelAudit off): a tenant's forged annotation is not recorded."""
    ns, alice, _user = _namespace_with_operator(control_plane, logs, procs, audited=False)
    name = _create(control_plane, ns, alice)
    assert _patch(control_plane, ns, alice, name, FORGED).returncode == 0  # nothing refuses it ...
    cancellation = wait_until(_cancelled(control_plane, ns, name), 30, what=f"{name} cancelled")
    assert "requestedByUser" not in cancellation, cancellation  # ... and nothing believes it
    assert cancellation["requestedBy"] == "kubectl-patch"


def policies_in_effect(cluster: Cluster, ns: str, who: Path, user: str) -> bool:
    """Both policies act: the validating one refuses a forged annotation, and the mutating one writes
    the real user over a forged one in a cancelling request. Each takes effect on its own, moments
    after it is created: the validating one alone once passed while the mutating one did not yet act."""
    name = _create(cluster, ns, cluster.kubeconfig)
    if _patch(cluster, ns, who, name, {"metadata": {"annotations": {KEY: "system:admin"}}}).returncode == 0:
        return False
    cancelled = _create(cluster, ns, cluster.kubeconfig)
    if _patch(cluster, ns, who, cancelled, FORGED).returncode != 0:
        return False
    obj = json.loads(cluster.kubectl("-n", ns, "get", "wfx", cancelled, "-o", "json").stdout)
    return bool(obj["metadata"].get("annotations", {}).get(KEY) == user)


@pytest.fixture
def audit(control_plane: Cluster) -> Iterator[None]:
    release = f"audit{uuid.uuid4().hex[:5]}"
    manifest = yaml.safe_dump_all(_policies(release, "default"))
    assert [d["kind"] for d in yaml.safe_load_all(manifest)] == [
        "MutatingAdmissionPolicy",
        "MutatingAdmissionPolicyBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    control_plane.kubectl("apply", "-f", "-", input=manifest)
    try:
        yield
    finally:
        control_plane.kubectl("delete", "-f", "-", "--ignore-not-found", input=manifest, check=False)


def test_with_the_audit_policies_only_the_cancelling_request_names_its_own_user(
    control_plane: Cluster, logs: Path, procs: list[Proc], audit: None
) -> None:
    ns, alice, user = _namespace_with_operator(control_plane, logs, procs, audited=True)

    wait_until(lambda: policies_in_effect(control_plane, ns, alice, user), 30, interval=0.5, what="the policies")

    # Written before the cancel, or at creation with no cancel: refused.
    name = _create(control_plane, ns, alice)
    done = _patch(control_plane, ns, alice, name, {"metadata": {"annotations": {KEY: "system:admin"}}})
    assert done.returncode != 0 and "only the request that sets" in done.stderr, done.stderr
    with pytest.raises(Exception, match="only the request that sets"):
        _create(control_plane, ns, alice, {KEY: "system:admin"})

    # Forged in the cancelling request itself: the mutation policy writes the real user over it.
    assert _patch(control_plane, ns, alice, name, FORGED).returncode == 0
    obj = json.loads(control_plane.kubectl("-n", ns, "get", "wfx", name, "-o", "json").stdout)
    assert obj["metadata"]["annotations"][KEY] == user

    # After the cancel: neither changed nor removed, not even by the admin.
    again = _patch(control_plane, ns, alice, name, {"metadata": {"annotations": {KEY: "system:admin"}}})
    assert again.returncode != 0 and "only the request that sets" in again.stderr, again.stderr
    removed = _patch(control_plane, ns, control_plane.kubeconfig, name, {"metadata": {"annotations": {KEY: None}}})
    assert removed.returncode != 0, removed.stderr

    cancellation = wait_until(_cancelled(control_plane, ns, name), 30, what=f"{name} cancelled")
    assert cancellation["requestedByUser"] == user and cancellation["message"] == "x"
