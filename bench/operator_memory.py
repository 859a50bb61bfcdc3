"""The operator's peak memory on runs with large inputs (issue 17, finding 9), on a fresh local plane.

A run may carry an input of up to ~1.5 MiB (etcd's request limit; the SDK refuses more than 512 KiB,
``kubectl`` users are bound only by etcd). The operator keeps no inputs, but it used to list runs 500
a page, and 60 runs of 1.3 MB took a restarted operator to 302 MB, past the chart's 256Mi limit: an
OOM loop. Now a page weighs about ``KUBESTEP_OPERATOR_LIST_BYTES`` (4 MiB). For N runs of S bytes of
input each (queued: nobody serves them), one run measures, side by side on the same objects, a
restarted operator's peak RSS (``VmHWM``) until it has listed every run and decided on them all, with
pages of 500 (``KUBESTEP_OPERATOR_LIST_BYTES=0``, as before) and with pages by weight; and the same
with tiny inputs for the floor. Results: ``bench/results/operator_memory.json`` and a table.

    python bench/operator_memory.py [--runs 300] [--input-kib 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from kubestep import KubestepClient
from kubestep import _protocol as api
from kubestep_dev.controlplane import ControlPlane
from kubestep_dev.local import Proc, start_operator
from kubestep_dev.ports import Ports

HERE = Path(__file__).resolve().parent
LOGS = HERE / "results" / "logs"
CHART_LIMIT_MB = 256  # charts/kubestep/values.yaml: operator.resources.limits.memory


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM")


async def populate(client: KubestepClient, n: int, input_bytes: int) -> None:
    gate = asyncio.Semaphore(8)
    payload = "x" * input_bytes

    async def one(i: int) -> None:
        body = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": f"big-{i:05d}"},
            "spec": {"workflow": "nobody-serves-this", "input": {"blob": payload}},
        }
        async with gate:
            await client._kube.create(api.execution_path(client.namespace), body)

    await asyncio.gather(*(one(i) for i in range(n)))


async def queued(client: KubestepClient, n: int) -> int:
    """How many runs have a phase (the operator decided on them), read page by page."""
    count, token = 0, None
    while True:
        params = {"limit": "20", **({"continue": token} if token else {})}
        page = await client._kube.get(api.execution_path(client.namespace), params)
        count += sum(1 for o in page["items"] if (o.get("status") or {}).get("phase"))
        token = page["metadata"].get("continue")
        if not token:
            return count


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def unfinished(port: int) -> float:
    """The operator's count of the unfinished runs it knows (its metrics), or -1 before it answers."""
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
            text = await r.text()
    except aiohttp.ClientError:
        return -1
    for line in text.splitlines():
        if line.startswith("kubestep_operator_unfinished_runs "):
            return float(line.split()[1])
    return -1


async def one_start(plane: ControlPlane, client: KubestepClient, n: int, env: dict[str, str]) -> dict[str, Any]:
    """A fresh operator on the namespace: its peak RSS once it has listed every run and decided on it."""
    port = free_port()
    op: Proc = start_operator(
        plane.kubeconfig, LOGS, [client.namespace], env={**env, "KUBESTEP_METRICS_PORT": str(port)}
    )
    t0 = time.monotonic()
    try:
        while await unfinished(port) < n or await queued(client, n) < n:
            if time.monotonic() - t0 > 900 or not op.alive():
                raise TimeoutError(f"the operator did not list and queue {n} runs (alive: {op.alive()})")
            await asyncio.sleep(0.5)
        listed = time.monotonic() - t0
        await asyncio.sleep(2)
        return {"peak_rss_mb": peak_rss_mb(op.pid), "listed_s": round(listed, 1)}
    finally:
        op.stop()


async def measure(plane: ControlPlane, n: int, input_kib: int) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": n, "input_kib": input_kib}
    for label, size in (("large", input_kib * 1024), ("tiny", 16)):
        ns = f"mem-{label}-{uuid.uuid4().hex[:4]}"
        async with KubestepClient(namespace=ns, kubeconfig=str(plane.kubeconfig)) as client:
            await client._kube.create(
                "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
            )
            t = time.monotonic()
            await populate(client, n, size)
            out[f"{label}_create_s"] = round(time.monotonic() - t, 1)
            await one_start(plane, client, n, {})  # warm-up: queues every run
            for mode, env in (("pages_of_500", {"KUBESTEP_OPERATOR_LIST_BYTES": "0"}), ("pages_by_weight", {})):
                row = await one_start(plane, client, n, env)
                out[f"{label}_{mode}_peak_rss_mb"] = row["peak_rss_mb"]
                out[f"{label}_{mode}_listed_s"] = row["listed_s"]
                print(label, mode, row, flush=True)
            await client._kube.delete(f"/api/v1/namespaces/{ns}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--input-kib", type=int, default=1024)
    args = ap.parse_args()
    plane = ControlPlane(state_dir=Path(f"/tmp/kubestep-mem-{uuid.uuid4().hex[:6]}"), ports=Ports.free(), progress=None)
    plane.up()
    try:
        results = asyncio.run(measure(plane, args.runs, args.input_kib))
    finally:
        plane.down(purge=True)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "operator_memory.json").write_text(json.dumps(results, indent=2) + "\n")
    r = results
    print(f"\n{r['runs']} queued runs; a restarted operator's peak RSS (MB) until it has listed them all")
    print(f"(the chart's limit: {CHART_LIMIT_MB} MB)\n")
    print("| input per run | pages of 500 (before) | pages by weight (now) |")
    print("|---|---:|---:|")
    print(
        f"| {r['input_kib']} KiB | {r['large_pages_of_500_peak_rss_mb']} | {r['large_pages_by_weight_peak_rss_mb']} |"
    )
    print(f"| 16 B (floor) | {r['tiny_pages_of_500_peak_rss_mb']} | {r['tiny_pages_by_weight_peak_rss_mb']} |")


if __name__ == "__main__":
    main()
