"""A local Kubernetes control plane for development and tests (`kubestep dev`).

Kubestep's behaviour (validation, RBAC, owner-reference garbage collection,
watches) is only worth testing against a real API server, and a container
engine is not always available. This package runs etcd, kube-apiserver and
kube-controller-manager as plain local processes: no kubelet, so pods never
run, but everything the operator and the SDK talk to is the real thing.

The same code serves users (`kubestep dev up|down|status|env`) and the test
suite (`tests/conftest.py`), so what the tests exercise is what users get.

It is tooling, not runtime: a package of its own next to `kubestep` and
`kubestep_operator`, which neither imports (`.importlinter`). The `kubestep`
CLI finds its `dev` command through the `kubestep.commands` entry point, as it
finds `operator`, and skips it where the package is absent (the image leaves it
out). This module imports nothing, so that `cli` loads without the `dev` extra
(an SDK-only install) and `kubestep dev up` can name the extra. Import from the
modules: `controlplane` (`ControlPlane`; needs the extra), `ports`, `locations`,
`kubeconfigs`, `certs`, `processes`, `local` (the operator and workers as
processes), `errors`, `cli`.
"""
