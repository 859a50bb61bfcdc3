"""Steps per second a worker sustains with N concurrent runs, on the real local control plane.

Starts ``--runs`` runs of ``until-cancelled`` (10 ms steps, never ending) on
one worker process, samples the total of ``status.stepsCompleted`` every
``--every`` seconds, and prints the rate between samples. A rate that falls
over time means each write costs more as runs age (what the step journal
fixed); a flat rate well under runs × 100 means a process is saturated: look
at ``top``, ``py-spy`` for the worker, and the apiserver's
``/debug/pprof/profile`` (profiling is on in the local plane).

    python bench/step_throughput.py [--runs 100] [--checkpoint-seconds 1] [--seconds 30] [--hold 0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from pathlib import Path

from kubestep import KubestepClient
from kubestep import _protocol as api
from kubestep_dev.controlplane import ControlPlane
from kubestep_dev.local import start_operator, start_worker
from kubestep_dev.ports import Ports

HERE = Path(__file__).resolve().parent


async def measure(kubeconfig: Path, args: argparse.Namespace) -> None:
    ns = f"thru-{uuid.uuid4().hex[:6]}"
    async with KubestepClient(namespace=ns, kubeconfig=str(kubeconfig)) as client:
        await client._kube.create(
            "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        )
        logs = HERE / "results" / "logs"
        procs = [
            start_operator(kubeconfig, logs, [ns]),
            start_worker(
                kubeconfig,
                logs,
                ns,
                "thru-worker",
                concurrency=args.runs + 10,
                env={"KUBESTEP_CHECKPOINT_SECONDS": str(args.checkpoint_seconds)},
            ),
        ]
        try:
            await asyncio.sleep(2)
            await asyncio.gather(*(client.start("until-cancelled", {"seconds": 0.01}) for _ in range(args.runs)))
            t0 = last_t = time.monotonic()
            last = 0
            while time.monotonic() - t0 < args.seconds:
                await asyncio.sleep(args.every)
                items = (await client._kube.get(api.execution_path(ns)))["items"]
                total = sum(int((o.get("status") or {}).get("stepsCompleted") or 0) for o in items)
                now = time.monotonic()
                print(
                    f"t={now - t0:5.1f}s  steps={total:7d}  rate={(total - last) / (now - last_t):7.0f}/s", flush=True
                )
                last, last_t = total, now
            print(f"worker pid {procs[1].pid}; holding {args.hold:g} s for profiling", flush=True)
            await asyncio.sleep(args.hold)
        finally:
            for p in procs:
                p.stop()
            await client._kube.delete(f"/api/v1/namespaces/{ns}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--checkpoint-seconds", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--every", type=float, default=5.0)
    parser.add_argument("--hold", type=float, default=0.0, help="keep everything running this long at the end")
    args = parser.parse_args()
    state = Path(os.path.expanduser("~/.cache/kubestep/bench-throughput"))
    ControlPlane(state, progress=None).down(purge=True)
    plane = ControlPlane(state, ports=Ports.free())
    plane.up()
    try:
        asyncio.run(measure(plane.kubeconfig, args))
    finally:
        plane.down()


if __name__ == "__main__":
    main()
