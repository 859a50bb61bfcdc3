"""Cancel latency and timeout overshoot, on the real local control plane, as a user installs Kubestep.

The chart is installed into the benchmark's namespace (its RBAC and its API Priority and Fairness
objects; no pod runs, there is no kubelet), and the operator and the worker run as local processes with
the chart's service-account tokens, so the apiserver treats their requests as it would in a cluster.
Measured in one run, so the ratios hold on a noisy machine:

* floor — the raw apiserver round trip: patch an object's spec, see the watch event. No Kubestep code is
  involved; nothing can be faster than this.
* cancel latency — patch ``spec.cancelRequested`` → a watch on that run alone sees ``Cancelled``, for
  runs doing 10 ms steps, with 1 and with 100 concurrent runs (the 100 keep running at default
  durability, the apiserver saturated by their step writes; one at a time is cancelled and replaced).
  The path: patch → the holder's watch → the step in flight finishes → the final status write → event.
* timeout overshoot — ``finishedAt − deadline`` for runs with a 1 s budget and 10 ms steps, alone and
  beside 100 concurrent runs; and the Kubernetes Job controller's overshoot (``activeDeadlineSeconds``)
  on the same plane, for comparison.

Targets (issue 7; benchmark, not tests): at 100 concurrent runs cancel p99 ≤ 250 ms and p50 ≤ 5 × the
floor; timeout overshoot p99 ≤ 100 ms with 1 and with 100 runs.

    python bench/cancel_latency.py [--samples N] [--concurrent 100] [--checkpoint-seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from stats import summary  # bench/stats.py (the script's folder is on sys.path)

from kubestep import KubestepClient
from kubestep import _protocol as api
from kubestep._errors import TransportError
from kubestep_dev.controlplane import ControlPlane
from kubestep_dev.local import start_operator, start_worker
from kubestep_dev.locations import find_binary
from kubestep_dev.ports import Ports

REPO = Path(__file__).resolve().parents[1]
PATCH_MS: list[float] = []  # the cancel request's own round trip, for the diagnosis

HERE = Path(__file__).resolve().parent


class Watcher:
    """Keeps the latest state of every run by listing them every quarter of a second, and resolves
    futures when a run reaches a phase. A list, not a watch on every event: a Python client parsing
    every step of 100 runs would be the slow consumer that holds up the apiserver's dispatch of
    watch events to everyone (the measured paths use a watch on one run each, ``ended``)."""

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
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                listing = await self.kube.get(api.execution_path(self.ns))
                now = time.perf_counter()
                for obj in listing["items"]:
                    self._seen(obj, now)
            except TransportError as e:
                print(f"listing failed: {e!r}", file=sys.stderr)
            await asyncio.sleep(0.25)

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


async def ended(client: KubestepClient, name: str) -> tuple[str, float] | None:
    """Opens a watch on one run (as ``kubectl get -w`` or ``handle.result()`` would) and returns an
    awaitable of (phase, perf_counter time) when it ends; the watch starts from a list made now."""
    path, params = api.execution_path(client.namespace), {"fieldSelector": f"metadata.name={name}"}
    listing = await client._kube.get(path, params)
    rv = listing["metadata"]["resourceVersion"]

    async def follow() -> tuple[str, float]:
        async for ev in client._kube.watch(path, rv, params):
            phase = _phase(ev.get("object"))
            if phase in api.TERMINAL_PHASES:
                return str(phase), time.perf_counter()
        raise RuntimeError(f"watch of {name} ended")

    return asyncio.ensure_future(follow())  # type: ignore[return-value]


async def cancel_one(client: KubestepClient, watcher: Watcher, name: str) -> float | None:
    """Latency of one cancel in ms; None if the run finished on its own first."""
    done = await ended(client, name)
    t0, wall = time.perf_counter(), time.time()
    await client._kube.merge_patch(api.execution_path(client.namespace, name), {"spec": {"cancelRequested": True}})
    PATCH_MS.append((time.perf_counter() - t0) * 1000)
    phase, t1 = await asyncio.wait_for(done, 120)  # type: ignore[misc]
    if os.environ.get("BENCH_DIAG"):
        st = (await client.get_execution(name)).status
        c = st.cancellation
        print(
            f"  diag: total {1000 * (t1 - t0):.0f} ms; operator saw it {1000 * (c.requested_at.timestamp() - wall):.0f}; "
            f"worker acknowledged {1000 * (c.acknowledged_at.timestamp() - wall):.0f} by {c.acknowledged_by}; "
            f"reason {st.reason}",
            file=sys.stderr,
        )
    if phase != api.Phase.CANCELLED:
        return None
    return (t1 - t0) * 1000


async def cancel_latency(
    client: KubestepClient, watcher: Watcher, concurrent: int, samples: int, steps_per_run: int
) -> list[float]:
    """Keeps `concurrent` runs of 10 ms steps going; cancels one at a time, mid-step."""
    pool: set[str] = set()
    stop = asyncio.Event()

    async def refill() -> None:
        while not stop.is_set():
            pool.difference_update({n for n in pool if _phase(watcher.latest.get(n)) in api.TERMINAL_PHASES})
            if len(pool) < concurrent:
                handles = await asyncio.gather(
                    *(
                        client.start("steps", {"count": steps_per_run, "seconds": 0.01})
                        for _ in range(concurrent - len(pool))
                    )
                )
                pool.update(h.id for h in handles)
            await asyncio.sleep(0.05)

    def running() -> list[str]:
        return [
            n
            for n in pool
            if _phase(watcher.latest.get(n)) == api.Phase.RUNNING
            and ((watcher.latest[n].get("status") or {}).get("stepsCompleted") or 0) < steps_per_run // 2
        ]

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
    await asyncio.gather(*(watcher.expect(x, api.Phase.CANCELLED, api.Phase.COMPLETED) for x in pool))
    if skipped:
        print(f"  ({skipped} victims finished before their cancel landed; not counted)", file=sys.stderr)
    return out


async def timeout_overshoot(
    client: KubestepClient, watcher: Watcher, samples: int, batch: int = 10, beside: int = 0
) -> list[float]:
    """``batch`` runs at a time with a 1 s budget; with ``beside`` > 0, while that many others step."""
    others = await asyncio.gather(*(client.start("until-cancelled", {"seconds": 0.01}) for _ in range(beside)))
    if others:
        await asyncio.gather(*(watcher.expect(h.id, api.Phase.RUNNING) for h in others))
    out: list[float] = []
    while len(out) < samples:
        handles = await asyncio.gather(
            *(client.start("until-cancelled", {"seconds": 0.01}, run_timeout_seconds=1) for _ in range(batch))
        )
        await asyncio.gather(*(watcher.expect(h.id, api.Phase.CANCELLED) for h in handles))
        for h in handles:
            e = await h.status()
            assert e.status.reason == api.StopReason.RUN_TIMEOUT, e.status
            # cancellation.requestedAt of a RunTimeout is the deadline itself.
            assert e.status.finished_at and e.status.cancellation and e.status.cancellation.requested_at
            out.append((e.status.finished_at - e.status.cancellation.requested_at).total_seconds() * 1000)
    await asyncio.gather(*(client.cancel_execution(h.id) for h in others))
    await asyncio.gather(*(watcher.expect(h.id, api.Phase.CANCELLED) for h in others))
    return out[:samples]


async def job_overshoot(client: KubestepClient, samples: int, deadline: int = 2) -> list[float]:
    """The Job controller's overshoot past activeDeadlineSeconds on the same plane (no kubelet needed:
    it fails the Job at startTime + deadline whatever its pods do); both times from one watch."""
    kube, ns = client._kube, client.namespace
    path = f"/apis/batch/v1/namespaces/{ns}/jobs"
    listing = await kube.get(path)
    started: dict[str, float] = {}
    failed: dict[str, float] = {}

    async def follow(rv: str) -> None:
        while len(failed) < samples:
            async for ev in kube.watch(path, rv):
                obj, now = ev.get("object") or {}, time.perf_counter()
                rv = obj.get("metadata", {}).get("resourceVersion", rv)
                name, status = obj.get("metadata", {}).get("name"), obj.get("status") or {}
                if status.get("startTime") and name not in started:
                    started[name] = now
                if any(c.get("type") == "Failed" and c.get("status") == "True" for c in status.get("conditions") or []):
                    failed.setdefault(name, now)
                if len(failed) >= samples:
                    return

    task = asyncio.ensure_future(follow(listing["metadata"]["resourceVersion"]))
    for i in range(samples):
        await kube.create(
            path,
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": f"peer-{i}"},
                "spec": {
                    "activeDeadlineSeconds": deadline,
                    "backoffLimit": 0,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}],
                        }
                    },
                },
            },
        )
        await asyncio.sleep(0.2)
    await asyncio.wait_for(task, deadline + 120)
    return [(failed[n] - started[n] - deadline) * 1000 for n in failed if n in started]


def table(results: dict[str, Any]) -> str:
    rows = ["| measurement | n | p50 ms | p95 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|---:|"]
    for key, label in [
        ("floor_patch_to_watch", "floor: apiserver patch → watch event"),
        ("cancel_1", "cancel → Cancelled, 1 run (10 ms steps)"),
        ("cancel_100", f"cancel → Cancelled, {results['concurrent']} concurrent runs"),
        ("cancel_100_request", "… of which the cancel request's own round trip"),
        ("timeout_overshoot", "timeout overshoot (finishedAt − deadline), 1 run at a time"),
        ("timeout_overshoot_100", f"timeout overshoot beside {results['concurrent']} runs"),
        ("job_overshoot", "Kubernetes Job controller: activeDeadlineSeconds overshoot"),
    ]:
        if key not in results:
            continue
        s = results[key]
        rows.append(f"| {label} | {s['n']} | {s['p50']:.1f} | {s['p95']:.1f} | {s['p99']:.1f} | {s['max']:.1f} |")
    r = results
    rows.append("")
    rows.append(
        f"cancel p50 / floor p50: {r['cancel_1']['p50'] / r['floor_patch_to_watch']['p50']:.1f}× (1 run), "
        f"{r['cancel_100']['p50'] / r['floor_patch_to_watch']['p50']:.1f}× ({r['concurrent']} runs; goal ≤ 5×)"
    )
    return "\n".join(rows)


def install_chart(plane: ControlPlane, ns: str) -> tuple[Path, Path]:
    """The chart in ``ns`` (RBAC and FlowSchemas; its Deployments never get pods here); returns
    kubeconfigs for its operator and worker service accounts."""
    import subprocess

    subprocess.run(
        [
            str(find_binary("helm")),
            "install",
            "kubestep",
            str(REPO / "charts" / "kubestep"),
            "--kubeconfig",
            str(plane.kubeconfig),
            "--namespace",
            ns,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    work = plane.state_dir / "bench-kubeconfigs"
    return (
        plane.kubeconfig_for_service_account(ns, "kubestep-operator", work / "operator.yaml"),
        # Bound to a (stand-in) pod, as a worker pod's token is: the chart's admission policy wants it.
        plane.kubeconfig_for_service_account(ns, "kubestep-worker", work / "worker.yaml", pod="bench-worker"),
    )


async def measure(plane: ControlPlane, args: argparse.Namespace) -> dict[str, Any]:
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    logs = HERE / "results" / "logs"
    kubeconfig = plane.kubeconfig
    async with KubestepClient(namespace=ns, kubeconfig=str(kubeconfig)) as client:
        await client._kube.create(
            "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        )
        as_operator, as_worker = install_chart(plane, ns)
        procs = [
            start_operator(as_operator, logs, [ns]),
            start_worker(
                as_worker,
                logs,
                ns,
                "bench-worker",
                concurrency=args.concurrent + 10,
                env={"KUBESTEP_CHECKPOINT_SECONDS": str(args.checkpoint_seconds)},
            ),
        ]
        watcher = Watcher(client)
        try:
            await watcher.start()
            await asyncio.sleep(2)
            results: dict[str, Any] = {
                "concurrent": args.concurrent,
                "steps_per_run": args.steps,
                "checkpoint_seconds": args.checkpoint_seconds,
            }
            print("floor ...", file=sys.stderr)
            results["floor_patch_to_watch"] = summary(await floor(client, args.samples * 2))
            print("cancel, 1 run ...", file=sys.stderr)
            results["cancel_1"] = summary(await cancel_latency(client, watcher, 1, args.samples, args.steps))
            print(f"cancel, {args.concurrent} runs ...", file=sys.stderr)
            PATCH_MS.clear()
            results["cancel_100"] = summary(
                await cancel_latency(client, watcher, args.concurrent, args.samples, args.steps)
            )
            results["cancel_100_request"] = summary(PATCH_MS)
            print("timeout overshoot ...", file=sys.stderr)
            results["timeout_overshoot"] = summary(await timeout_overshoot(client, watcher, args.samples, batch=1))
            print(f"timeout overshoot beside {args.concurrent} runs ...", file=sys.stderr)
            results["timeout_overshoot_100"] = summary(
                await timeout_overshoot(client, watcher, args.samples, batch=10, beside=args.concurrent - 10)
            )
            print("Job controller overshoot ...", file=sys.stderr)
            results["job_overshoot"] = summary(await job_overshoot(client, min(args.samples, 30)))
            return results
        finally:
            if watcher.task is not None:
                watcher.task.cancel()
            for p in procs:
                p.stop()
            await client._kube.delete(f"/api/v1/namespaces/{ns}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--concurrent", type=int, default=100)
    parser.add_argument("--steps", type=int, default=300, help="10 ms steps per run (runs are replaced as they end)")
    parser.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=0.0,
        help="worker's KUBESTEP_CHECKPOINT_SECONDS (0: every step durable before the next)",
    )
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    state = Path(os.path.expanduser("~/.cache/kubestep/bench"))
    ControlPlane(state, progress=None).down(purge=True)  # a fresh plane each time
    plane = ControlPlane(state, ports=Ports.free())
    plane.up()
    try:
        results = asyncio.run(measure(plane, args))
    finally:
        plane.down()
    results["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = (
        "cancel_latency" if not args.checkpoint_seconds else f"cancel_latency_checkpoint_{args.checkpoint_seconds:g}s"
    )
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    md = (
        f"Worker checkpoint interval: {args.checkpoint_seconds:g} s "
        f"({'every step durable before the next' if not args.checkpoint_seconds else 'batched'}); "
        f"{args.steps} steps of 10 ms per run.\n\n" + table(results)
    )
    (out / f"{stem}.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
