"""A local Kubernetes control plane for development and tests (`kubestep dev`).

Kubestep's behaviour (validation, RBAC, owner-reference garbage collection,
watches) is only worth testing against a real API server, and a container
engine is not always available. This package runs etcd, kube-apiserver and
kube-controller-manager as plain local processes: no kubelet, so pods never
run, but everything the operator and the SDK talk to is the real thing.

The same code serves users (`kubestep dev up|down|status|env`) and the test
suite (`tests/conftest.py`), so what the tests exercise is what users get.
Importing it needs no `cryptography`; only starting a plane does (the `dev`
extra), so the `kubestep` CLI loads in an SDK-only install.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubestep._dev.controlplane import COMPONENTS, ComponentStatus, ControlPlane, UpResult
    from kubestep._dev.errors import ControlPlaneError, KubectlError, MissingBinaryError
    from kubestep._dev.kubeconfigs import run_kubectl, write_token_kubeconfig
    from kubestep._dev.locations import cache_dir, default_crds_dir, default_state_dir, find_binary
    from kubestep._dev.ports import PORT_ENV_VARS, Ports

# Loaded on first use (PEP 562): the `kubestep` CLI imports `kubestep._dev.cli` in every install, and
# the control plane needs the dev extra (httpx, cryptography). An eager import here broke the CLI of
# the image, which has only the operator extra (found by building it: `make image`).
_HOME = {
    "COMPONENTS": "controlplane",
    "ComponentStatus": "controlplane",
    "ControlPlane": "controlplane",
    "UpResult": "controlplane",
    "ControlPlaneError": "errors",
    "KubectlError": "errors",
    "MissingBinaryError": "errors",
    "run_kubectl": "kubeconfigs",
    "write_token_kubeconfig": "kubeconfigs",
    "cache_dir": "locations",
    "default_crds_dir": "locations",
    "default_state_dir": "locations",
    "find_binary": "locations",
    "PORT_ENV_VARS": "ports",
    "Ports": "ports",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)


__all__ = [
    "COMPONENTS",
    "PORT_ENV_VARS",
    "ComponentStatus",
    "ControlPlane",
    "ControlPlaneError",
    "KubectlError",
    "MissingBinaryError",
    "Ports",
    "UpResult",
    "cache_dir",
    "default_crds_dir",
    "default_state_dir",
    "find_binary",
    "run_kubectl",
    "write_token_kubeconfig",
]
