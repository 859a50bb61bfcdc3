"""Lists and watches under injected faults, before and after the shared informer (issue 18), on a fresh
local plane, side by side in one run.

Three faults, each for ``--seconds``:

* ``cut``: every connection through a loopback proxy (``tests/faultproxy.py``) is cut once a second,
  mid-watch, while a run is created every half second;
* ``refused``: the proxy refuses every connection (an apiserver restart, a partition);
* ``forbidden``: RBAC grants ``list`` but not ``watch`` (also: an APF-rejected watch, a proxy that
  drops long requests), straight to the apiserver.

Three loops of the code before issue 18 (loaded from git, ``--before``), each with its own retry
rules: the operator's informer (``watching.Informer``), the worker's (``Worker._follow``); and the
shared informer (``kubestep._informer``) now used by all of them. Counted through the transport:
lists (each reads the whole collection: N objects) and watch requests. Results:
``bench/results/informer_faults.json`` and a table.

    python bench/informer_faults.py [--seconds 20] [--before e000f05]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import subprocess
import sys
import types
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from kubestep import KubestepClient
from kubestep import _protocol as api
from kubestep._informer import Informer
from kubestep._kube import Kube
from kubestep_dev.controlplane import ControlPlane
from kubestep_dev.ports import Ports

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
from tests.faultproxy import FaultProxy  # noqa: E402

RUNS_AT_START = 50  # the collection each list re-reads


class Counting(Kube):
    """The real client, counting what goes over the wire."""

    lists = 0
    watches = 0

    async def get_sized(self, path: str, params: dict[str, Any] | None = None) -> tuple[Any, int]:
        if not (params or {}).get("continue"):
            self.lists += 1
        return await super().get_sized(path, params)

    async def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        if path.endswith(api.PLURAL) and not (params or {}).get("continue"):
            self.lists += 1
        return await super().get(path, params)

    async def watch(self, *args: Any, **kw: Any) -> AsyncIterator[dict[str, Any]]:
        self.watches += 1
        async for event in super().watch(*args, **kw):
            yield event


def load_before(rev: str, path: str, name: str) -> types.ModuleType:
    """A module as it was at ``rev``, imported beside today's package (its relative imports resolve there)."""
    source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, check=True, capture_output=True, text=True)
    target = Path(f"/tmp/kubestep-before-{rev}-{Path(path).name}")
    target.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location(name, target)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def loops(rev: str) -> dict[str, Callable[[Kube, str], Awaitable[None]]]:
    old_operator = load_before(rev, "operator/kubestep_operator/watching.py", "kubestep_operator._watching_before")
    old_worker = load_before(rev, "sdk/kubestep/_worker/worker.py", "kubestep._worker._worker_before")

    async def operator_before(kube: Kube, namespace: str) -> None:
        scope = old_operator.Scope(namespace)
        await old_operator.Informer(
            kube, api.execution_path(namespace), scope, lambda k, o: None, lambda s, k: None
        ).run()

    async def worker_before(kube: Kube, namespace: str) -> None:
        fake = types.SimpleNamespace(control=kube, namespace=namespace, _on_event=lambda *a, **k: None)
        await old_worker.Worker._follow(fake, "queued", f"status.phase={api.Phase.QUEUED}", asyncio.Event())

    async def shared_now(kube: Kube, namespace: str) -> None:
        await Informer(kube, api.execution_path(namespace), lambda c: None).run()

    return {"operator before": operator_before, "worker before": worker_before, "shared informer now": shared_now}


async def one(
    plane: ControlPlane, loop: Callable[[Kube, str], Awaitable[None]], fault: str, seconds: float
) -> dict[str, int]:
    namespace = f"f-{uuid.uuid4().hex[:6]}"
    plane.kubectl("create", "namespace", namespace)
    async with KubestepClient(namespace, kubeconfig=str(plane.kubeconfig)) as admin:
        await asyncio.gather(*(admin.start("nobody", {"i": i}) for i in range(RUNS_AT_START)))
        proxy = await FaultProxy.for_kubeconfig(plane.kubeconfig).start()
        kubeconfig = proxy.kubeconfig(plane.kubeconfig)
        if fault == "forbidden":
            plane.kubectl("create", "serviceaccount", "lister", "-n", namespace)
            plane.kubectl(
                "create", "role", "l", "-n", namespace, "--verb=get,list", f"--resource={api.PLURAL}.{api.GROUP}"
            )
            plane.kubectl(
                "create", "rolebinding", "l", "-n", namespace, "--role=l", f"--serviceaccount={namespace}:lister"
            )
            kubeconfig = plane.kubeconfig_for_service_account(namespace, "lister")
        kube = Counting(str(kubeconfig))
        task = asyncio.create_task(loop(kube, namespace))
        await asyncio.sleep(2)  # listed and watching
        start_lists, start_watches = kube.lists, kube.watches
        if fault == "refused":
            proxy.refusing = True
            proxy.cut()
        for tick in range(int(seconds * 2)):
            await asyncio.sleep(0.5)
            if fault == "cut":
                await admin.start("nobody", {"tick": tick})
                if tick % 2:
                    proxy.cut()
        result = {"lists": kube.lists - start_lists, "watches": kube.watches - start_watches}
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await kube.aclose()
        await proxy.stop()
    plane.kubectl("delete", "namespace", namespace, "--wait=false")
    return result


async def measure(plane: ControlPlane, rev: str, seconds: float) -> dict[str, dict[str, dict[str, int]]]:
    results: dict[str, dict[str, dict[str, int]]] = {}
    for name, loop in loops(rev).items():
        for fault in ("cut", "refused", "forbidden"):
            results.setdefault(fault, {})[name] = await one(plane, loop, fault, seconds)
            print(fault, name, results[fault][name], flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--before", default="e000f05", help="the revision before the shared informer")
    args = ap.parse_args()
    plane = ControlPlane(
        state_dir=Path(f"/tmp/kubestep-faults-{uuid.uuid4().hex[:6]}"), ports=Ports.free(), progress=None
    )
    plane.up()
    try:
        results = asyncio.run(measure(plane, args.before, args.seconds))
    finally:
        plane.down(purge=True)
    (HERE / "results").mkdir(exist_ok=True)
    out = {"seconds": args.seconds, "runs_at_start": RUNS_AT_START, "before": args.before, "results": results}
    (HERE / "results" / "informer_faults.json").write_text(json.dumps(out, indent=2) + "\n")
    names = list(next(iter(results.values())))
    print(f"\nLists (each re-reads {RUNS_AT_START}+ runs) / watch requests in {args.seconds:.0f} s of each fault\n")
    print("| fault | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for fault, row in results.items():
        print(f"| {fault} | " + " | ".join(f"{row[n]['lists']} / {row[n]['watches']}" for n in names) + " |")


if __name__ == "__main__":
    main()
