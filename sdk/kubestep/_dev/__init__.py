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

from kubestep._dev.controlplane import COMPONENTS, ComponentStatus, ControlPlane, UpResult
from kubestep._dev.errors import ControlPlaneError, KubectlError, MissingBinaryError
from kubestep._dev.kubeconfigs import run_kubectl, write_token_kubeconfig
from kubestep._dev.locations import cache_dir, default_crds_dir, default_state_dir, find_binary
from kubestep._dev.ports import PORT_ENV_VARS, Ports

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
