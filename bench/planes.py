"""What every benchmark script does around its measurement: a fresh local control plane of its own (its
state dir under ``~/.cache/kubestep``, purged first), a namespace with the operator and one worker as
local processes, and the machine's line for the results."""

from __future__ import annotations

import contextlib
import os
import platform
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from kubestep import KubestepClient
from kubestep_dev.controlplane import ControlPlane
from kubestep_dev.local import start_operator, start_worker
from kubestep_dev.ports import Ports

LOGS = Path(__file__).resolve().parent / "results" / "logs"


@contextlib.contextmanager
def fresh_plane(name: str) -> Iterator[ControlPlane]:
    """A control plane started from nothing in ``~/.cache/kubestep/<name>``, stopped after."""
    state = Path(os.path.expanduser(f"~/.cache/kubestep/{name}"))
    ControlPlane(state, progress=None).down(purge=True)
    plane = ControlPlane(state, ports=Ports.free())
    plane.up()
    try:
        yield plane
    finally:
        plane.down()


@contextlib.asynccontextmanager
async def namespace_with_kubestep(
    plane: ControlPlane,
    *,
    concurrency: int,
    worker: str = "bench-worker",
    operator_env: dict[str, str] | None = None,
) -> AsyncIterator[KubestepClient]:
    """A fresh namespace with an operator and one worker (``kubestep.examples``) serving it; a client
    of it. Everything is stopped and the namespace deleted after."""
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    async with KubestepClient(namespace=ns, kubeconfig=str(plane.kubeconfig)) as client:
        await client._kube.create(
            "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        )
        procs = [
            start_operator(plane.kubeconfig, LOGS, [ns], env=operator_env),
            start_worker(plane.kubeconfig, LOGS, ns, worker, concurrency=concurrency),
        ]
        try:
            yield client
        finally:
            for p in procs:
                p.stop()
            await client._kube.delete(f"/api/v1/namespaces/{ns}")


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
