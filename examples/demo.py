"""The Kubestep demo, on the local control plane (`make demo`).

Starts the control plane (`kubestep dev up`), the operator and two workers,
then four runs of the example workflows:

  1. one that completes;
  2. one cancelled with `kubectl patch` while it runs;
  3. one that exceeds its run budget (runTimeoutSeconds) and is cancelled;
  4. one that waits longer than its budget and still completes (waits don't count).

It prints their final status and `kubectl get wfx`, then stops the operator
and workers. The control plane keeps running so you can look around.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from kubestep import KubestepClient
from kubestep_dev.controlplane import ControlPlane
from kubestep_dev.local import start_operator, start_worker

NAMESPACE = "kubestep-demo"


async def demo(plane: ControlPlane, logs: Path) -> None:
    kubectl = plane.kubectl
    async with KubestepClient(namespace=NAMESPACE, kubeconfig=str(plane.kubeconfig)) as client:
        runs = {
            "completes": await client.start("steps", {"count": 3, "seconds": 0.3}, name="completes"),
            "cancelled": await client.start("until-cancelled", {"seconds": 0.3}, name="cancelled-by-patch"),
            "timed-out": await client.start(
                "steps", {"count": 20, "seconds": 0.5}, run_timeout_seconds=2, name="times-out"
            ),
            "waits": await client.start(
                "wait-then-finish",
                {"seconds": 1, "wait_seconds": 3},
                run_timeout_seconds=2,
                name="waits-longer-than-budget",
            ),
        }
        print("started 4 runs; cancelling 'cancelled-by-patch' in 1.5 s with kubectl patch ...")
        await asyncio.sleep(1.5)
        patch = [
            "-n",
            NAMESPACE,
            "patch",
            "wfx",
            "cancelled-by-patch",
            "--type",
            "merge",
            "-p",
            '{"spec":{"cancelRequested":true}}',
        ]
        print("$ kubectl " + " ".join(p if " " not in p and "{" not in p else f"'{p}'" for p in patch))
        print(kubectl(*patch).stdout.strip())
        results = {k: await h.wait(timeout=60) for k, h in runs.items()}

    print()
    print(f"{'run':<26} {'workflow':<18} {'phase':<10} {'reason':<11} {'steps':>5} {'active s':>8} {'total s':>7}")
    for e in results.values():
        s = e.status
        active = sum(
            (
                (st.finished_at - st.started_at).total_seconds()
                for st in s.steps
                if st.kind == "Run" and st.finished_at and st.started_at
            ),
            0.0,
        )
        total = (s.finished_at - s.started_at).total_seconds() if s.finished_at and s.started_at else 0.0
        done = sum(1 for st in s.steps if st.state == "Completed")
        print(
            f"{e.id:<26} {e.workflow:<18} {s.phase or '':<10} {s.reason or '':<11} {done:>5} "
            f"{active:>8.1f} {total:>7.1f}"
        )
    print()
    print("$ kubectl get wfx -n", NAMESPACE)
    print(kubectl("-n", NAMESPACE, "get", "wfx").stdout)
    expected = {"completes": "Completed", "cancelled": "Cancelled", "timed-out": "Cancelled", "waits": "Completed"}
    wrong = {k: e.status.phase for k, e in results.items() if e.status.phase != expected[k]}
    if wrong:
        sys.exit(f"unexpected outcome: {json.dumps(wrong)} (logs in {logs})")


def main() -> None:
    plane = ControlPlane()
    plane.up()
    kubectl = plane.kubectl
    kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", timeout=120)
    kubectl("create", "namespace", NAMESPACE)
    logs = plane.state_dir / "logs" / f"demo-{int(time.time())}"
    procs = [start_operator(plane.kubeconfig, logs, [NAMESPACE])]
    procs += [start_worker(plane.kubeconfig, logs, NAMESPACE, f"demo-worker-{i}") for i in (1, 2)]
    try:
        time.sleep(2)  # the workers register their leases
        asyncio.run(demo(plane, logs))
    finally:
        for p in procs:
            p.stop()
    print(f"Operator and worker logs: {logs}")
    print("The control plane is still running; to use it:")
    print(plane.env())
    print("Stop it with: kubestep dev down")


if __name__ == "__main__":
    main()
