"""What a durable step costs, against what one small write costs, measured in one run (issue 7, goals 1, 3).

On a fresh local control plane, with the operator running:

* **floor**: the round trip of one small status write (a JSON patch of a WorkflowExecution that holds
  no steps, through the same client the worker uses), p50 of ``--samples``, one at a time; and the
  apiserver's **small-write ceiling**: the same writes, 8 at a time, per second.
* **one run** of 10 ms steps at default durability (every step recorded before the next starts):
  the time per step, less the step's own time (the worker's ``kubestep_worker_step_seconds``), is the
  overhead per step; the goal is ≤ 1.5 × the floor.
* **``--runs`` concurrent runs** (100): durable steps per second; the goal is ≥ 1,000, or ≥ 50% of the
  ceiling divided by the writes a step needs (status writes and journal chunks, from the apiserver's
  request counters).
* **fan-out**: watch events the workers received per step, with 1, 4 and 8 workers sharing the runs
  (the workers' ``kubestep_worker_watch_events_total``).

    python bench/step_cost.py [--runs 100] [--seconds 20] [--samples 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from kubestep import KubestepClient
from kubestep import _protocol as api
from kubestep_dev.controlplane import ControlPlane
from kubestep_dev.local import Proc, start_operator, start_worker
from kubestep_dev.ports import Ports

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(ports: list[int], name: str) -> float:
    total = 0.0
    for port in ports:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        total += sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)
    return total


def apiserver_writes(plane: ControlPlane) -> dict[str, float]:
    """The apiserver's own count of writes, by resource: status patches and ConfigMap creates."""
    out = plane.kubectl("get", "--raw", "/metrics").stdout
    counts = {"status": 0.0, "configmaps": 0.0}
    for fam in text_string_to_metric_families(out):
        if fam.name != "apiserver_request":
            continue
        for s in fam.samples:
            if s.name != "apiserver_request_total":
                continue
            if (
                s.labels.get("resource") == api.PLURAL
                and s.labels.get("subresource") == "status"
                and s.labels.get("verb") == "PATCH"
            ):
                counts["status"] += s.value
            if s.labels.get("resource") == "configmaps" and s.labels.get("verb") == "POST":
                counts["configmaps"] += s.value
    return counts


async def floor(client: KubestepClient, samples: int) -> tuple[float, float]:
    """p50 round trip of a small status write, and writes/s with 8 in flight."""
    kube, ns = client._kube, client.namespace
    names = [f"floor-{i}" for i in range(8)]
    for n in names:
        await kube.create(
            api.execution_path(ns),
            {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": n}, "spec": {"workflow": "floor"}},
        )
    ops = [{"op": "add", "path": "/status", "value": {"message": "x"}}]
    for n in names:
        await kube.request(
            "PATCH", api.execution_path(ns, n, "status"), json_body=ops, content_type="application/json-patch+json"
        )
    rtt = []
    for i in range(samples):
        t = time.perf_counter()
        await kube.request(
            "PATCH",
            api.execution_path(ns, names[0], "status"),
            content_type="application/json-patch+json",
            json_body=[{"op": "add", "path": "/status/message", "value": str(i)}],
        )
        rtt.append((time.perf_counter() - t) * 1000)
    total, t = 400, time.perf_counter()
    gate = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        async with gate:
            await kube.request(
                "PATCH",
                api.execution_path(ns, names[i % 8], "status"),
                content_type="application/json-patch+json",
                json_body=[{"op": "add", "path": "/status/message", "value": str(i)}],
            )

    await asyncio.gather(*(one(i) for i in range(total)))
    ceiling = total / (time.perf_counter() - t)
    for n in names:
        await kube.delete(api.execution_path(ns, n))
    return statistics.median(rtt), ceiling


async def run_steps(
    client: KubestepClient, plane: ControlPlane, workers: list[Proc], ports: list[int], runs: int, seconds: float
) -> dict[str, Any]:
    """``runs`` runs of 10 ms steps for ``seconds``: steps/s, overhead per step, writes per step."""
    handles = await asyncio.gather(*(client.start("until-cancelled", {"seconds": 0.01}) for _ in range(runs)))
    await asyncio.sleep(3)  # claimed and stepping

    async def total_steps() -> int:
        items = (await client._kube.get(api.execution_path(client.namespace)))["items"]
        return sum(int((o.get("status") or {}).get("stepsCompleted") or 0) for o in items)

    s0, w0 = await total_steps(), apiserver_writes(plane)
    fn0, n0 = scrape(ports, "kubestep_worker_step_seconds_sum"), scrape(ports, "kubestep_worker_step_seconds_count")
    ev0 = scrape(ports, "kubestep_worker_watch_events_total")
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    s1, w1 = await total_steps(), apiserver_writes(plane)
    fn1, n1 = scrape(ports, "kubestep_worker_step_seconds_sum"), scrape(ports, "kubestep_worker_step_seconds_count")
    ev1 = scrape(ports, "kubestep_worker_watch_events_total")
    elapsed = time.monotonic() - t0
    await asyncio.gather(*(client.cancel_execution(h.id) for h in handles))
    for h in handles:
        await client.wait(h.id, timeout=60)
    steps = max(1, s1 - s0)
    fn_ms = 1000 * (fn1 - fn0) / max(1, n1 - n0)
    return {
        "runs": runs,
        "steps_per_s": steps / elapsed,
        "ms_per_step_per_run": 1000 * elapsed * runs / steps,
        "step_fn_ms": fn_ms,
        "overhead_ms": 1000 * elapsed * runs / steps - fn_ms,
        "status_writes_per_step": (w1["status"] - w0["status"]) / steps,
        "chunk_writes_per_step": (w1["configmaps"] - w0["configmaps"]) / steps,
        "watch_events_per_step": (ev1 - ev0) / steps,
    }


async def measure(plane: ControlPlane, args: argparse.Namespace) -> dict[str, Any]:
    kubeconfig = plane.kubeconfig
    ns = f"cost-{uuid.uuid4().hex[:6]}"
    logs = HERE / "results" / "logs"
    results: dict[str, Any] = {}
    async with KubestepClient(namespace=ns, kubeconfig=str(kubeconfig)) as client:
        await client._kube.create(
            "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        )
        operator = start_operator(kubeconfig, logs, [ns])
        workers: list[Proc] = []
        try:
            await asyncio.sleep(2)
            results["floor_ms"], results["ceiling_writes_per_s"] = await floor(client, args.samples)
            for count in (1, 4, 8) if not args.quick else (1,):
                ports = [free_port() for _ in range(count - len(workers))]
                for port in ports:
                    workers.append(
                        start_worker(
                            kubeconfig, logs, ns, concurrency=args.runs + 10, env={"KUBESTEP_METRICS_PORT": str(port)}
                        )
                    )
                    workers[-1].metrics_port = port  # type: ignore[attr-defined]
                await asyncio.sleep(2)
                all_ports = [w.metrics_port for w in workers]  # type: ignore[attr-defined]
                if count == 1:
                    results["one_run"] = await run_steps(client, plane, workers, all_ports, 1, args.seconds)
                results[f"runs_{count}_workers"] = await run_steps(
                    client, plane, workers, all_ports, args.runs, args.seconds
                )
        finally:
            for p in [*workers, operator]:
                p.stop()
            await client._kube.delete(f"/api/v1/namespaces/{ns}")
    return results


def report(r: dict[str, Any]) -> str:
    one, many = r["one_run"], r["runs_1_workers"]
    writes = many["status_writes_per_step"] + many["chunk_writes_per_step"]
    lines = [
        f"floor: small status write round trip p50 {r['floor_ms']:.1f} ms; small-write ceiling "
        f"{r['ceiling_writes_per_s']:.0f} writes/s (8 in flight)",
        "",
        "| measurement | value | goal |",
        "|---|---:|---|",
        f"| one run: time per 10 ms step | {one['ms_per_step_per_run']:.1f} ms | |",
        f"| one run: overhead per step | {one['overhead_ms']:.1f} ms = {one['overhead_ms'] / r['floor_ms']:.2f} × floor "
        f"| ≤ 1.5 × floor |",
        f"| {many['runs']} runs, 1 worker: durable steps/s | {many['steps_per_s']:.0f} | ≥ 1,000, or ≥ "
        f"{0.5 * r['ceiling_writes_per_s'] / writes:.0f} (50% of ceiling / {writes:.2f} writes per step) |",
        f"| writes per step: status / journal chunks | {many['status_writes_per_step']:.2f} / "
        f"{many['chunk_writes_per_step']:.2f} | |",
    ]
    for count in (1, 4, 8):
        key = f"runs_{count}_workers"
        if key in r:
            lines.append(
                f"| watch events received by workers per step, {count} worker(s) | "
                f"{r[key]['watch_events_per_step']:.2f} | ~1 whatever the count |"
            )
            if count > 1:
                lines.append(
                    f"| {r[key]['runs']} runs, {count} workers: durable steps/s | {r[key]['steps_per_s']:.0f} | |"
                )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="one worker only (no fan-out figures)")
    args = ap.parse_args()
    plane = ControlPlane(
        state_dir=Path(f"/tmp/kubestep-cost-{uuid.uuid4().hex[:6]}"), ports=Ports.free(), progress=None
    )
    plane.up()
    try:
        results = asyncio.run(measure(plane, args))
    finally:
        plane.down(purge=True)
    out = HERE / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_cost.json").write_text(json.dumps(results, indent=2) + "\n")
    text = report(results)
    (out / "step_cost.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
