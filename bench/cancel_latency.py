"""Cancel latency and timeout overshoot, on the real local control plane.

Measured in one run, so the ratios hold on a noisy machine:

* floor — the raw apiserver round trip: patch an object's spec, see the watch
  event. No Kubestep code is involved; nothing can be faster than this.
* cancel latency — patch ``spec.cancelRequested`` → the client's watch sees
  phase ``Cancelled``, for a run doing 10 ms steps, with 1 and with 100
  concurrent runs (the 100 keep running; one at a time is cancelled and
  replaced). The path is: patch → operator event → status.cancellation →
  worker event → step in flight finishes → final status write → client event.
* timeout overshoot — ``finishedAt − deadline`` for runs with a 1 s budget
  and 10 ms steps: how late past the budget the run really stopped.

Targets (benchmark, not tests): cancel p50 ≤ 50 ms, p99 ≤ 250 ms at 100
concurrent runs; timeout overshoot p99 ≤ 200 ms.

    python bench/cancel_latency.py [--kubeconfig FILE] [--samples N] [--concurrent 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from kubestep import KubestepClient
from kubestep import _api as api
from kubestep._errors import TransportError
from kubestep._dev.controlplane import ControlPlane, Ports
from kubestep._dev.local import start_operator, start_worker

HERE = Path(__file__).resolve().parent


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50": pct(ms, 50), "p95": pct(ms, 95), "p99": pct(ms, 99),
            "mean": statistics.fmean(ms), "max": max(ms)}


class Watcher:
    """One watch on the namespace; resolves futures when a run reaches a phase."""

    def __init__(self, client: KubestepClient) -> None:
        self.kube = client._kube
        self.ns = client.namespace
        self.waiters: dict[tuple[str, str], asyncio.Future[float]] = {}
        self.latest: dict[str, dict[str, Any]] = {}
        self.task: asyncio.Task[None] | None = None

    def expect(self, name: str, *phases: str) -> asyncio.Future[float]:
        """Resolves with the perf_counter time the run was first seen in one of ``phases``."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        obj = self.latest.get(name)
        if obj and (obj.get("status") or {}).get("phase") in phases:
            fut.set_result(time.perf_counter())
        else:
            for phase in phases:
                self.waiters[(name, phase)] = fut
        return fut

    async def start(self) -> None:
        listing = await self.kube.get(api.execution_path(self.ns))
        self.task = asyncio.create_task(self._run(listing["metadata"]["resourceVersion"]))

    async def _run(self, rv: str) -> None:
        while True:
            try:
                async for ev in self.kube.watch(api.execution_path(self.ns), rv):
                    if ev["type"] == "ERROR":
                        break
                    obj = ev["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self._seen(obj, time.perf_counter())
            except TransportError as e:
                print(f"watch reconnect after {e!r}", file=sys.stderr)
            listing = await self.kube.get(api.execution_path(self.ns))
            rv = listing["metadata"]["resourceVersion"]
            for obj in listing["items"]:
                self._seen(obj, time.perf_counter())

    def _seen(self, obj: dict[str, Any], t: float) -> None:
        name = obj["metadata"]["name"]
        self.latest[name] = obj
        fut = self.waiters.pop((name, (obj.get("status") or {}).get("phase")), None)
        if fut and not fut.done():
            fut.set_result(t)
            for key in [k for k, f in self.waiters.items() if f is fut]:
                del self.waiters[key]


async def floor(client: KubestepClient, samples: int) -> list[float]:
    """Patch a ConfigMap, wait for our own watch to deliver it."""
    kube, ns = client._kube, client.namespace
    path = f"/api/v1/namespaces/{ns}/configmaps"
    name = f"floor-{uuid.uuid4().hex[:6]}"
    cm = await kube.create(path, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {}})
    out: list[float] = []
    rv = cm["metadata"]["resourceVersion"]
    params = {"fieldSelector": f"metadata.name={name}"}
    for i in range(samples):
        stream = kube.watch(path, rv, params)
        t0 = time.perf_counter()
        first = asyncio.ensure_future(stream.__anext__())
        await kube.merge_patch(f"{path}/{name}", {"data": {"i": str(i)}})
        ev = await first
        out.append((time.perf_counter() - t0) * 1000)
        rv = ev["object"]["metadata"]["resourceVersion"]
        await stream.aclose()
    return out


def _phase(obj: dict[str, Any] | None) -> str | None:
    return ((obj or {}).get("status") or {}).get("phase")


async def cancel_one(client: KubestepClient, watcher: Watcher, name: str) -> float | None:
    """Latency of one cancel in ms; None if the run finished on its own first."""
    done = watcher.expect(name, api.CANCELLED, api.COMPLETED)
    t0 = time.perf_counter()
    await client._kube.merge_patch(api.execution_path(client.namespace, name), {"spec": {"cancelRequested": True}})
    t1 = await asyncio.wait_for(done, 120)
    if _phase(watcher.latest.get(name)) != api.CANCELLED:
        return None
    return (t1 - t0) * 1000


async def cancel_latency(client: KubestepClient, watcher: Watcher, concurrent: int, samples: int,
                         steps_per_run: int) -> list[float]:
    """Keeps `concurrent` runs of 10 ms steps going; cancels one at a time, mid-step."""
    pool: set[str] = set()
    stop = asyncio.Event()

    async def refill() -> None:
        while not stop.is_set():
            pool.difference_update({n for n in pool if _phase(watcher.latest.get(n)) in api.TERMINAL_PHASES})
            if len(pool) < concurrent:
                handles = await asyncio.gather(*(client.start("steps", {"count": steps_per_run, "seconds": 0.01})
                                                 for _ in range(concurrent - len(pool))))
                pool.update(h.id for h in handles)
            await asyncio.sleep(0.05)

    def running() -> list[str]:
        return [n for n in pool if _phase(watcher.latest.get(n)) == api.RUNNING
                and ((watcher.latest[n].get("status") or {}).get("stepsCompleted") or 0) < steps_per_run // 2]

    refiller = asyncio.create_task(refill())
    start = time.monotonic()
    while len(running()) < concurrent * 0.9 and time.monotonic() - start < 60:
        await asyncio.sleep(0.1)
    out: list[float] = []
    skipped = 0
    while len(out) < samples:
        await asyncio.sleep(0.05 + random.random() * 0.05)  # land anywhere inside a step
        candidates = running()
        if not candidates:
            continue
        victim = random.choice(candidates)
        pool.discard(victim)
        latency = await cancel_one(client, watcher, victim)
        if latency is None:
            skipped += 1
        else:
            out.append(latency)
    stop.set()
    await refiller
    await asyncio.gather(*(client.cancel_execution(x) for x in pool))
    await asyncio.gather(*(watcher.expect(x, api.CANCELLED, api.COMPLETED) for x in pool))
    if skipped:
        print(f"  ({skipped} victims finished before their cancel landed; not counted)", file=sys.stderr)
    return out


async def timeout_overshoot(client: KubestepClient, watcher: Watcher, samples: int, batch: int = 10) -> list[float]:
    out: list[float] = []
    while len(out) < samples:
        handles = await asyncio.gather(*(client.start("until-cancelled", {"seconds": 0.01}, run_timeout_seconds=1)
                                         for _ in range(batch)))
        await asyncio.gather(*(watcher.expect(h.id, api.CANCELLED) for h in handles))
        for h in handles:
            e = await h.status()
            assert e.status.reason == api.RUN_TIMEOUT, e.status
            # cancellation.requestedAt of a RunTimeout is the deadline itself.
            assert e.status.finished_at and e.status.cancellation and e.status.cancellation.requested_at
            out.append((e.status.finished_at - e.status.cancellation.requested_at).total_seconds() * 1000)
    return out[:samples]


def table(results: dict[str, Any]) -> str:
    rows = ["| measurement | n | p50 ms | p95 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|---:|"]
    for key, label in [("floor_patch_to_watch", "floor: apiserver patch → watch event"),
                       ("cancel_1", "cancel → Cancelled, 1 run (10 ms steps)"),
                       ("cancel_100", f"cancel → Cancelled, {results['concurrent']} concurrent runs"),
                       ("timeout_overshoot", "timeout overshoot (finishedAt − deadline)")]:
        s = results[key]
        rows.append(f"| {label} | {s['n']} | {s['p50']:.1f} | {s['p95']:.1f} | {s['p99']:.1f} | {s['max']:.1f} |")
    r = results
    rows.append("")
    rows.append(f"cancel p50 / floor p50: {r['cancel_1']['p50'] / r['floor_patch_to_watch']['p50']:.1f}× (1 run), "
                f"{r['cancel_100']['p50'] / r['floor_patch_to_watch']['p50']:.1f}× ({r['concurrent']} runs)")
    return "\n".join(rows)


async def measure(kubeconfig: Path, args: argparse.Namespace) -> dict[str, Any]:
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    logs = HERE / "results" / "logs"
    async with KubestepClient(namespace=ns, kubeconfig=str(kubeconfig)) as client:
        await client._kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                         "metadata": {"name": ns}})
        procs = [start_operator(kubeconfig, logs, [ns]),
                 start_worker(kubeconfig, logs, ns, "bench-worker", concurrency=args.concurrent + 10,
                              env={"KUBESTEP_CHECKPOINT_SECONDS": str(args.checkpoint_seconds)})]
        watcher = Watcher(client)
        try:
            await watcher.start()
            await asyncio.sleep(2)
            results: dict[str, Any] = {"concurrent": args.concurrent, "steps_per_run": args.steps,
                                       "checkpoint_seconds": args.checkpoint_seconds}
            print("floor ...", file=sys.stderr)
            results["floor_patch_to_watch"] = summary(await floor(client, args.samples * 2))
            print("cancel, 1 run ...", file=sys.stderr)
            results["cancel_1"] = summary(await cancel_latency(client, watcher, 1, args.samples, args.steps))
            print(f"cancel, {args.concurrent} runs ...", file=sys.stderr)
            results["cancel_100"] = summary(await cancel_latency(client, watcher, args.concurrent, args.samples,
                                                                 args.steps))
            print("timeout overshoot ...", file=sys.stderr)
            results["timeout_overshoot"] = summary(await timeout_overshoot(client, watcher, args.samples))
            return results
        finally:
            if watcher.task is not None:
                watcher.task.cancel()
            for p in procs:
                p.stop()
            await client._kube.delete(f"/api/v1/namespaces/{ns}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", help="use this cluster instead of starting a local control plane")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--concurrent", type=int, default=100)
    parser.add_argument("--steps", type=int, default=300, help="10 ms steps per run (runs are replaced as they end)")
    parser.add_argument("--checkpoint-seconds", type=float, default=0.0,
                        help="worker's KUBESTEP_CHECKPOINT_SECONDS (0: every step durable before the next)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    plane = None
    if args.kubeconfig:
        kubeconfig = Path(args.kubeconfig)
    else:
        state = Path(os.path.expanduser("~/.cache/kubestep/bench"))
        ControlPlane(state, progress=None).down(purge=True)  # a fresh plane each time
        plane = ControlPlane(state, ports=Ports.free())
        plane.up()
        kubeconfig = plane.kubeconfig
    try:
        results = asyncio.run(measure(kubeconfig, args))
    finally:
        if plane is not None:
            plane.down()
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "cancel_latency" if not args.checkpoint_seconds else f"cancel_latency_checkpoint_{args.checkpoint_seconds:g}s"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    md = (f"Worker checkpoint interval: {args.checkpoint_seconds:g} s "
          f"({'every step durable before the next' if not args.checkpoint_seconds else 'batched'}); "
          f"{args.steps} steps of 10 ms per run.\n\n" + table(results))
    (out / f"{stem}.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
