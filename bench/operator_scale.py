"""The operator and a worker at scale (issue 7, goal 5), on a fresh local control plane.

For each N (default 1,000 and 10,000) live runs, a third each queued (no worker serves them), waiting
(``wakeAt`` an hour away) and running (held by a stand-in worker whose Lease the benchmark keeps fresh,
with a deadline an hour away), all written through the API as a worker and the operator would:

* the operator's RSS and CPU while idle for ``--idle`` seconds with N live runs;
* a restart: the time from the new operator process's start until a cancel of a queued run, sent at
  once, is honoured (``Cancelled``); and the time until it has listed everything (its metrics);
* then a worker: RSS per held run with 200 running runs (1 s steps), and with 1,000 waiting runs
  (released by design: a waiting run is not held).

    python bench/operator_scale.py [--runs 1000 10000] [--idle 30]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from kubestep import KubestepClient
from kubestep import _protocol as api
from kubestep_dev.controlplane import ControlPlane
from kubestep_dev.local import Proc, start_operator, start_worker
from kubestep_dev.ports import Ports

HERE = Path(__file__).resolve().parent
LOGS = HERE / "results" / "logs"
GHOST = "ghost-worker"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def usage(pid: int) -> tuple[float, int]:
    """CPU seconds and RSS bytes of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


async def populate(client: KubestepClient, n: int) -> list[str]:
    kube, ns = client._kube, client.namespace
    now = api.now()
    gate = asyncio.Semaphore(16)
    names = [f"r{i:05d}" for i in range(n)]

    async def one(i: int, name: str) -> None:
        async with gate:
            kind = i % 3
            await client.start(
                "nobody-serves-this" if kind == 0 else "served", None, name=name, run_timeout_seconds=3600
            )
            if kind == 0:
                return
            obj = await kube.get(api.execution_path(ns, name))
            status: dict[str, Any] = (
                {
                    "phase": api.Phase.WAITING,
                    "wakeAt": api.fmt_time(now + dt.timedelta(hours=1)),
                    "waitingFor": {"key": "pause"},
                }
                if kind == 1
                else {
                    "phase": api.Phase.RUNNING,
                    "worker": GHOST,
                    "attempt": 1,
                    "startedAt": api.fmt_time(now),
                    "deadline": api.fmt_time(now + dt.timedelta(hours=1)),
                }
            )
            await kube.update_status(obj, status)

    await asyncio.gather(*(one(i, name) for i, name in enumerate(names)))
    return names


async def keep_lease(client: KubestepClient) -> None:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{client.namespace}/leases"
    name = f"{api.LEASE_PREFIX}{GHOST}"
    await client._kube.create(
        path,
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "labels": {api.LABEL_WORKER: "true"},
                "annotations": {api.ANNOTATION_WORKFLOWS: "served"},
            },
            "spec": {"holderIdentity": GHOST, "leaseDurationSeconds": 15, "renewTime": api.fmt_time(api.now())},
        },
    )
    while True:
        await asyncio.sleep(5)
        await client._kube.merge_patch(f"{path}/{name}", {"spec": {"renewTime": api.fmt_time(api.now())}})


async def all_phased(client: KubestepClient, n: int, cap: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < cap:
        items = (await client._kube.get(api.execution_path(client.namespace)))["items"]
        if sum(1 for o in items if (o.get("status") or {}).get("phase")) >= n:
            return time.monotonic() - t0
        await asyncio.sleep(2)
    raise TimeoutError(f"not every run had a phase within {cap} s")


async def operator_at(plane: ControlPlane, n: int, idle: float) -> dict[str, Any]:
    ns = f"scale-{n}-{uuid.uuid4().hex[:4]}"
    res: dict[str, Any] = {"runs": n}
    async with KubestepClient(namespace=ns, kubeconfig=str(plane.kubeconfig)) as client:
        await client._kube.create(
            "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        )
        lease = asyncio.create_task(keep_lease(client))
        op: Proc | None = None
        try:
            t = time.monotonic()
            names = await populate(client, n)
            res["create_s"] = round(time.monotonic() - t, 1)
            op = start_operator(plane.kubeconfig, LOGS, [ns])
            res["first_start_all_queued_s"] = round(await all_phased(client, n, 900), 1)
            await asyncio.sleep(5)
            c0, _ = usage(op.pid)
            t0 = time.monotonic()
            await asyncio.sleep(idle)
            c1, rss = usage(op.pid)
            res["idle_cpu_pct_of_core"] = round(100 * (c1 - c0) / (time.monotonic() - t0), 2)
            res["rss_mb"] = round(rss / 2**20, 1)
            op.stop()
            op = start_operator(plane.kubeconfig, LOGS, [ns])
            t1 = time.monotonic()
            queued = [x for i, x in enumerate(names) if i % 3 == 0][-1]
            await client.cancel_execution(queued)
            while (await client.get_execution(queued)).status.phase != api.Phase.CANCELLED:
                if time.monotonic() - t1 > 600:
                    raise TimeoutError("the cancel was not honoured within 600 s of the restart")
                await asyncio.sleep(0.1)
            res["restart_to_cancel_honoured_s"] = round(time.monotonic() - t1, 2)
            await asyncio.sleep(10)
            res["rss_after_restart_mb"] = round(usage(op.pid)[1] / 2**20, 1)
        finally:
            lease.cancel()
            if op is not None:
                op.stop()
            await client._kube.delete(f"/api/v1/namespaces/{ns}")
    return res


async def worker_memory(plane: ControlPlane) -> dict[str, Any]:
    ns = f"wmem-{uuid.uuid4().hex[:4]}"
    res: dict[str, Any] = {}
    async with KubestepClient(namespace=ns, kubeconfig=str(plane.kubeconfig)) as client:
        await client._kube.create(
            "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        )
        op = start_operator(plane.kubeconfig, LOGS, [ns])
        worker = start_worker(plane.kubeconfig, LOGS, ns, "mem-worker", concurrency=1100)
        try:
            await asyncio.sleep(4)
            base = usage(worker.pid)[1]
            running = await asyncio.gather(*(client.start("until-cancelled", {"seconds": 1}) for _ in range(200)))
            while (
                len(
                    (await client._kube.get(api.execution_path(ns), {"fieldSelector": "status.phase=Running"}))["items"]
                )
                < 200
            ):
                await asyncio.sleep(1)
            await asyncio.sleep(5)
            held = usage(worker.pid)[1]
            res["worker_rss_idle_mb"] = round(base / 2**20, 1)
            res["worker_kb_per_running_run"] = round((held - base) / 200 / 1024, 1)
            await asyncio.gather(*(client.cancel_execution(h.id) for h in running))
            waiting = await asyncio.gather(
                *(client.start("wait-then-finish", {"seconds": 0.01, "wait_seconds": 3600}) for _ in range(1000))
            )
            t0 = time.monotonic()
            while time.monotonic() - t0 < 300:
                items = await client._kube.get(api.execution_path(ns), {"fieldSelector": "status.phase=Waiting"})
                if len(items["items"]) >= 1000:
                    break
                await asyncio.sleep(2)
            await asyncio.sleep(5)
            res["worker_rss_with_1000_waiting_mb"] = round(usage(worker.pid)[1] / 2**20, 1)
            res["waiting_runs_held_by_the_worker"] = 0  # a wait releases the run: nothing is held
            await asyncio.gather(*(client.cancel_execution(h.id) for h in waiting))
        finally:
            worker.stop()
            op.stop()
            await client._kube.delete(f"/api/v1/namespaces/{ns}")
    return res


async def measure(plane: ControlPlane, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"operator": []}
    for n in args.runs:
        row = await operator_at(plane, n, args.idle)
        print(json.dumps(row), flush=True)
        out["operator"].append(row)
    out["worker"] = await worker_memory(plane)
    print(json.dumps(out["worker"]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, nargs="*", default=[1000, 10000])
    ap.add_argument("--idle", type=float, default=30)
    args = ap.parse_args()
    plane = ControlPlane(
        state_dir=Path(f"/tmp/kubestep-scale-{uuid.uuid4().hex[:6]}"), ports=Ports.free(), progress=None
    )
    plane.up()
    try:
        results = asyncio.run(measure(plane, args))
    finally:
        plane.down(purge=True)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "operator_scale.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n| live runs | RSS (MB) | idle CPU (% of a core) | restart → queued run's cancel honoured (s) |")
    print("|---:|---:|---:|---:|")
    for r in results["operator"]:
        print(f"| {r['runs']} | {r['rss_mb']} | {r['idle_cpu_pct_of_core']} | {r['restart_to_cancel_honoured_s']} |")
    print(f"\nworker: {results['worker']}")


if __name__ == "__main__":
    main()
