"""Real credentials for the adversarial suite: ServiceAccount tokens bound to a Pod (what a worker pod
gets from its projected volume, with the pod's name in ``request.userInfo.extra``), and plain ones."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

from kubestep_dev.kubeconfigs import write_token_kubeconfig

from ..conftest import Cluster


def pod(cluster: Cluster, namespace: str, name: str, service_account: str) -> dict[str, Any]:
    """A Pod object that never runs, only for tokens to be bound to: a scheduling gate keeps it off
    every node (on the real node of ``make node-e2e`` too, where a scheduled pod would make the kubelet
    try to pull its image), and its image is never pulled anyway. Its spec passes Pod Security
    "restricted", as the chart's namespaces enforce."""
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "schedulingGates": [{"name": "kubestep.io/tokens-only"}],
            "serviceAccountName": service_account,
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "c",
                    "image": "kubestep:never-pulled",
                    "imagePullPolicy": "Never",
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
        },
    }
    out = cluster.kubectl("-n", namespace, "create", "-f", "-", "-o", "json", input=json.dumps(body)).stdout
    return dict(json.loads(out))


def token(cluster: Cluster, namespace: str, service_account: str, bound_pod: dict[str, Any] | None) -> str:
    """A fresh token of ``service_account``, bound to ``bound_pod`` if given (as a pod's projected one)."""
    args = ["-n", namespace, "create", "token", service_account, "--duration=1h"]
    if bound_pod is not None:
        meta = bound_pod["metadata"]
        args += ["--bound-object-kind=Pod", f"--bound-object-name={meta['name']}", f"--bound-object-uid={meta['uid']}"]
    return cluster.kubectl(*args).stdout.strip()


def kubeconfig(cluster: Cluster, namespace: str, service_account: str, bound_pod: dict[str, Any] | None) -> Path:
    """A kubeconfig with a fresh token of ``service_account``, bound to ``bound_pod`` if given."""
    bearer = token(cluster, namespace, service_account, bound_pod)
    view = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json").stdout)
    server = view["clusters"][0]["cluster"]
    path = cluster.work_dir / "kubeconfigs" / f"{namespace}-{service_account}-{uuid.uuid4().hex[:6]}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_token_kubeconfig(
        path,
        server=server["server"],
        ca_pem=base64.b64decode(server["certificate-authority-data"]),
        token=bearer,
        user=f"system:serviceaccount:{namespace}:{service_account}",
        namespace=namespace,
    )
