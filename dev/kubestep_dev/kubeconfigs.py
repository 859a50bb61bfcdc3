"""kubectl and kubeconfig helpers (also used by the tests for external clusters)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import yaml

from .errors import KubectlError

CLUSTER_NAME = "kubestep-dev"


def run_kubectl(
    kubectl: Path,
    kubeconfig: Path,
    *args: str,
    input: str | None = None,
    check: bool = True,
    timeout: float = 120.0,
    cache_dir: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run kubectl with `kubeconfig`; raise KubectlError (with its stderr) if `check`."""
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    if cache_dir is not None:
        env["KUBECACHEDIR"] = str(cache_dir)
    argv = [str(kubectl), f"--kubeconfig={kubeconfig}", *args]
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise KubectlError(args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def write_token_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_pem: bytes,
    token: str,
    user: str,
    namespace: str | None = None,
) -> Path:
    """Write a kubeconfig that authenticates with a bearer token."""
    write_kubeconfig(path, server=server, ca_pem=ca_pem, user=user, credentials={"token": token}, namespace=namespace)
    return path


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_pem: bytes,
    user: str,
    credentials: Mapping[str, str],
    namespace: str | None = None,
) -> None:
    context: dict[str, Any] = {"cluster": CLUSTER_NAME, "user": user}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)},
            }
        ],
        "users": [{"name": user, "user": dict(credentials)}],
        "contexts": [{"name": CLUSTER_NAME, "context": context}],
        "current-context": CLUSTER_NAME,
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    f: IO[str]
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    os.replace(tmp, path)


def b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def sh_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)
