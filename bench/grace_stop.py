"""How fast the hard stop ends a run whose step never returns, by kind of step (issue 8).

For each kind (``async``: a hung await; ``sync``: a thread in ``time.sleep``; ``stubborn``: async code
that swallows its cancellation) it starts ``--samples`` runs of ``hang`` with a grace period of
``--grace`` seconds, cancels each once its hanging step has started, and reports the time from the end
of the grace period (``cancellation.requestedAt + grace``) to the run's ``finishedAt``, both on the
cluster's clock. A sync or stubborn step makes the worker restart itself; the benchmark starts a new
worker process when the old one has exited, and reports how long the old one took to exit.

    python bench/grace_stop.py [--samples 10] [--grace 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from pathlib import Path

from kubestep import KubestepClient
from kubestep import _protocol as api
from kubestep_dev.controlplane import ControlPlane
from kubestep_dev.local import Proc, start_operator, start_worker
from kubestep_dev.ports import Ports

HERE = Path(__file__).resolve().parent


async def measure(kubeconfig: Path, args: argparse.Namespace) -> None:
    ns = f"grace-{uuid.uuid4().hex[:6]}"
    logs = HERE / "results" / "logs"
    async with KubestepClient(namespace=ns, kubeconfig=str(kubeconfig)) as client:
        await client._kube.create(
            "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        )
        operator = start_operator(kubeconfig, logs, [ns], lease_seconds=5)
        worker: Proc | None = None
        rows = []
        try:
            for kind in args.kinds:
                overshoot, exits = [], []
                for _ in range(args.samples):
                    if worker is None or not worker.alive():
                        worker = start_worker(kubeconfig, logs, ns, concurrency=4, lease_seconds=5)
                        await asyncio.sleep(2)  # its Lease, then the operator knows it
                    h = await client.start(
                        "hang",
                        {"kind": kind, "seconds": 3600, "cleanup": False},
                        cancel_grace_period_seconds=args.grace,
                    )
                    while True:
                        e = await client.get_execution(h.id)
                        if e.status.phase == api.Phase.RUNNING and any(s.key == "first" for s in e.status.steps):
                            break
                        await asyncio.sleep(0.05)
                    await asyncio.sleep(0.2)
                    await client.cancel_execution(h.id)
                    e = await client.wait(h.id, timeout=60)
                    assert e.status.cancellation and e.status.cancellation.requested_at and e.status.finished_at
                    grace_end = e.status.cancellation.requested_at.timestamp() + args.grace
                    overshoot.append(1000 * (e.status.finished_at.timestamp() - grace_end))
                    if kind != "async":
                        t0 = time.monotonic()
                        while worker.alive() and time.monotonic() - t0 < 60:
                            await asyncio.sleep(0.05)
                        exits.append(1000 * (time.monotonic() - t0))
                rows.append((kind, overshoot, exits))
        finally:
            for p in (worker, operator):
                if p is not None:
                    p.stop()
            await client._kube.delete(f"/api/v1/namespaces/{ns}")
    print(f"\ngrace period {args.grace:g} s, {args.samples} runs per kind; ms from the end of the grace period")
    print(
        "| step | run ended after the grace period: p50 / max (ms) | worker exit after the run ended: p50 / max (ms) |"
    )
    print("|---|---:|---:|")
    for kind, overshoot, exits in rows:
        ex = f"{statistics.median(exits):.0f} / {max(exits):.0f}" if exits else "— (no restart)"
        print(f"| {kind} | {statistics.median(overshoot):.0f} / {max(overshoot):.0f} | {ex} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--grace", type=int, default=1)
    ap.add_argument("--kinds", nargs="+", default=["async", "sync", "stubborn"])
    args = ap.parse_args()
    plane = ControlPlane(
        state_dir=Path(f"/tmp/kubestep-grace-{uuid.uuid4().hex[:6]}"), ports=Ports.free(), progress=None
    )
    plane.up()
    try:
        asyncio.run(measure(plane.kubeconfig, args))
    finally:
        plane.down(purge=True)


if __name__ == "__main__":
    main()
