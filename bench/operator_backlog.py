"""An operator started on a backlog: N runs created while no operator ran (issue 12).

For each N: creates N runs of a workflow no worker serves in a fresh namespace, starts the operator, cancels
the last-created run as soon as the first run is queued (the drain has begun), and reports

* the time until every run has a phase (the drain),
* the time until that cancel is honoured (``Cancelled``), and how many runs were queued before it,
* the operator's write throughput over the drain, from its own metrics
  (``kubestep_operator_write_seconds_count``), and its CPU time,
* how long SIGTERM took to stop it.

    python bench/operator_backlog.py [--runs 200 500 1000 2000 10000] [--writers 8] [--cap 600]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from kubestep import KubestepClient
from kubestep import _protocol as api
from kubestep_dev.controlplane import ControlPlane
from kubestep_dev.local import start_operator
from kubestep_dev.ports import Ports

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def writes(port: int) -> float:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return float("nan")
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "kubestep_operator_write_seconds_count"
    )


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one(kubeconfig: Path, n: int, args: argparse.Namespace) -> dict[str, Any]:
    ns = f"backlog-{uuid.uuid4().hex[:6]}"
    res: dict[str, Any] = {"runs": n}
    async with KubestepClient(namespace=ns, kubeconfig=str(kubeconfig)) as client:
        kube = client._kube
        await kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        gate = asyncio.Semaphore(16)

        async def create(i: int) -> None:
            async with gate:
                await client.start("nobody-serves-this", None, name=f"r{i:05d}")

        t = time.monotonic()
        await asyncio.gather(*(create(i) for i in range(n)))
        res["create_s"] = round(time.monotonic() - t, 1)
        port = free_port()
        env = {"KUBESTEP_METRICS_PORT": str(port), "KUBESTEP_OPERATOR_WRITERS": str(args.writers)}
        env.update(dict(kv.split("=", 1) for kv in args.env))
        listing = await kube.get(api.execution_path(ns))
        phases = {x["metadata"]["name"]: (x.get("status") or {}).get("phase") for x in listing["items"]}
        op = start_operator(kubeconfig, HERE / "results" / "logs", [ns], env=env)
        t0 = time.monotonic()
        last = f"r{n - 1:05d}"
        marks: dict[str, float] = {}
        queued_before_cancel = None

        async def observe() -> None:
            """One watch, so observing costs the plane little: every run's phase as it changes."""
            nonlocal queued_before_cancel
            rv = listing["metadata"]["resourceVersion"]
            while True:
                async for event in kube.watch(api.execution_path(ns), rv):
                    obj = event.get("object") or {}
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if event.get("type") not in ("ADDED", "MODIFIED"):
                        continue
                    name, phase = obj["metadata"]["name"], (obj.get("status") or {}).get("phase")
                    phases[name] = phase
                    if "started" not in marks and phase:
                        marks["started"] = time.monotonic()
                        marks["cancel_wall"] = time.time()
                        await client.cancel_execution(last)
                        marks["cancel"] = time.monotonic()
                    if name == last and phase == api.Phase.CANCELLED and "honoured" not in marks:
                        marks["honoured"] = time.monotonic()
                        finished = api.parse_time((obj.get("status") or {}).get("finishedAt"))
                        if finished is not None:  # the operator's own clock: when it decided
                            marks["decided_after"] = finished.timestamp() - marks["cancel_wall"]
                        queued_before_cancel = sum(1 for p in phases.values() if p == api.Phase.QUEUED)
                    if all(phases.values()):
                        return

        try:
            try:
                await asyncio.wait_for(observe(), args.cap)
            except TimeoutError:
                pass
            done = time.monotonic()
            res["drain_started_s"] = round(marks["started"] - t0, 1) if "started" in marks else None
            res["with_phase"] = sum(1 for p in phases.values() if p)
            res["all_queued_s"] = round(done - t0, 1) if res["with_phase"] == n else None
            res["cancel_honoured_s"] = round(marks["honoured"] - marks["cancel"], 2) if "honoured" in marks else None
            res["cancel_decided_s"] = round(marks["decided_after"], 2) if "decided_after" in marks else None
            res["queued_before_cancel"] = queued_before_cancel
            total = writes(port)
            res["operator_writes"] = total
            drain = done - marks.get("started", done)
            res["writes_per_s"] = round(total / drain, 0) if drain > 0 else None
            res["operator_cpu_s"] = round(cpu_seconds(op.pid), 1)
        finally:
            sent = time.monotonic()
            op.signal(signal.SIGTERM)
            try:
                op.popen.wait(30)
                res["sigterm_exit_s"] = round(time.monotonic() - sent, 2)
            except Exception:
                res["sigterm_exit_s"] = None
            op.stop(timeout=1)
            await kube.delete(f"/api/v1/namespaces/{ns}")
    return res


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, nargs="+", default=[200, 500, 1000, 2000])
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--cap", type=float, default=600, help="give up on one N after this many seconds")
    ap.add_argument("--env", nargs="*", default=[], help="extra KEY=VALUE for the operator")
    ap.add_argument("--state-dir", default=None)
    args = ap.parse_args()
    state = Path(args.state_dir or f"/tmp/kubestep-backlog-{uuid.uuid4().hex[:6]}")
    plane = ControlPlane(state_dir=state, ports=Ports.free(), progress=None)
    plane.up()
    rows = []
    try:
        for n in args.runs:
            row = await one(plane.kubeconfig, n, args)
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        plane.down(purge=True)
    print(
        "\n| runs waiting | all queued (s) | cancel honoured (s) | queued before the cancel | writes/s | SIGTERM → exit (s) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['runs']} | {r['all_queued_s']} | {r['cancel_honoured_s']} | {r['queued_before_cancel']} "
            f"| {r['writes_per_s']} | {r['sigterm_exit_s']} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
