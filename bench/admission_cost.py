"""What the worker admission policy costs the hot path (issue 17): every step a worker records is a
status write the chart's ValidatingAdmissionPolicy (``templates/worker-admission.yaml``) now judges.

On a fresh local plane, the chart installed (its RBAC, FlowSchemas and policies), an operator and one
worker on the chart's service-account tokens (the worker's bound to a stand-in pod), 100 concurrent runs
of 10 ms steps: durable steps/s and API writes per step with the policy's binding in place and removed,
alternated (on, off, on, off) so that drift on this noisy machine falls on both sides alike.

    python bench/admission_cost.py [--seconds 20] [--runs 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import uuid
from pathlib import Path
from typing import Any

from cancel_latency import install_chart  # siblings in bench/ (the script's folder is on sys.path)
from step_cost import free_port, run_steps

from kubestep import KubestepClient
from kubestep_dev.controlplane import ControlPlane
from kubestep_dev.local import start_operator, start_worker
from kubestep_dev.ports import Ports

HERE = Path(__file__).resolve().parent
BINDINGS = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"


async def measure(plane: ControlPlane, args: argparse.Namespace) -> dict[str, Any]:
    ns = f"adm-{uuid.uuid4().hex[:6]}"
    logs = HERE / "results" / "logs"
    out: dict[str, Any] = {"on": [], "off": []}
    async with KubestepClient(namespace=ns, kubeconfig=str(plane.kubeconfig)) as client:
        kube = client._kube
        await kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        as_operator, as_worker = install_chart(plane, ns)
        name = f"{ns}-kubestep-worker-writes"
        binding = await kube.get(f"{BINDINGS}/{name}")
        binding = {k: binding[k] for k in ("apiVersion", "kind", "spec")} | {"metadata": {"name": name}}
        port = free_port()
        procs = [
            start_operator(as_operator, logs, [ns]),
            start_worker(
                as_worker,
                logs,
                ns,
                "bench-worker",
                concurrency=args.runs + 10,
                env={"KUBESTEP_METRICS_PORT": str(port)},
            ),
        ]
        try:
            await asyncio.sleep(3)
            for mode in ("on", "off", "on", "off"):
                if mode == "off":
                    await kube.delete(f"{BINDINGS}/{name}")
                else:
                    try:
                        await kube.create(BINDINGS, binding)
                    except Exception:  # already there (the first round)
                        pass
                await asyncio.sleep(3)  # the apiserver's policy informer catches up
                row = await run_steps(client, plane, procs[1:], [port], args.runs, args.seconds)
                out[mode].append(row)
                print(mode, json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
        finally:
            for p in procs:
                p.stop()
            await kube.delete(f"/api/v1/namespaces/{ns}")
    for mode in ("on", "off"):
        out[f"{mode}_steps_per_s"] = round(statistics.mean(r["steps_per_s"] for r in out[mode]), 1)
        out[f"{mode}_writes_per_step"] = round(statistics.mean(r["status_writes_per_step"] for r in out[mode]), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--runs", type=int, default=100)
    args = ap.parse_args()
    plane = ControlPlane(state_dir=Path(f"/tmp/kubestep-adm-{uuid.uuid4().hex[:6]}"), ports=Ports.free(), progress=None)
    plane.up()
    try:
        r = asyncio.run(measure(plane, args))
    finally:
        plane.down(purge=True)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "admission_cost.json").write_text(json.dumps(r, indent=2) + "\n")
    print(f"\n{args.runs} runs of 10 ms steps, one worker on the chart's tokens; mean of two rounds each")
    print("| worker admission policy | durable steps/s | status writes per step |")
    print("|---|---:|---:|")
    print(f"| bound (the chart's default) | {r['on_steps_per_s']} | {r['on_writes_per_step']} |")
    print(f"| binding removed | {r['off_steps_per_s']} | {r['off_writes_per_step']} |")
    print(f"ratio on/off: {r['on_steps_per_s'] / r['off_steps_per_s']:.2f}")


if __name__ == "__main__":
    main()
