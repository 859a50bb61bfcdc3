"""Kubestep and Temporal on the same workload, one after the other in one window, in one table (issue 7).

Runs ``bench/step_cost.py`` and ``bench/cancel_latency.py`` (Kubestep, each on a fresh local control
plane), then ``bench/temporal_peer.py`` (a fresh Temporal dev server built by ``bench/temporal-setup.sh``),
and prints every figure next to its peer with both floors, so ratios are read within one run. Not part
of the test suite: ``make bench-peer``.

    python bench/side_by_side.py [--samples 30] [--concurrent 100] [--skip-kubestep] [--skip-temporal]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PEER_PYTHON = (
    Path(os.environ.get("KUBESTEP_TEMPORAL_DIR", Path.home() / ".cache/kubestep/temporal")) / "venv/bin/python"
)


def run(argv: list[str]) -> None:
    print("+", " ".join(argv), file=sys.stderr, flush=True)
    subprocess.run(argv, check=True)


def load(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((RESULTS / name).read_text())
    return result


def cell(s: dict[str, Any] | None) -> str:
    return "—" if not s else f"{s['p50']:.0f} / {s['p95']:.0f} / {s['p99']:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--concurrent", type=int, default=100)
    ap.add_argument("--skip-kubestep", action="store_true", help="reuse bench/results/*.json")
    ap.add_argument("--skip-temporal", action="store_true", help="reuse bench/results/temporal_peer.json")
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if not args.skip_kubestep:
        run([sys.executable, str(HERE / "step_cost.py"), "--runs", str(args.concurrent), "--quick"])
        run(
            [
                sys.executable,
                str(HERE / "cancel_latency.py"),
                "--samples",
                str(args.samples),
                "--concurrent",
                str(args.concurrent),
            ]
        )
    if not args.skip_temporal:
        if not PEER_PYTHON.exists():
            raise SystemExit(f"no Temporal peer at {PEER_PYTHON}: run bench/temporal-setup.sh first")
        run(
            [
                str(PEER_PYTHON),
                str(HERE / "temporal_peer.py"),
                "--out",
                str(RESULTS / "temporal_peer.json"),
                "--samples",
                str(args.samples),
                "--concurrent",
                str(args.concurrent),
            ]
        )
    k_cost, k_cancel, t = load("step_cost.json"), load("cancel_latency.json"), load("temporal_peer.json")
    n = args.concurrent
    rows = [
        (
            "floor: a write seen by its writer's watch / long poll, p50 ms",
            f"{k_cancel['floor_patch_to_watch']['p50']:.1f}",
            f"{t['floor_signal_to_history']['p50']:.1f}",
        ),
        (
            "one run of 10 ms steps: time per step, ms",
            f"{k_cost['one_run']['ms_per_step_per_run']:.1f}",
            f"{t['ms_per_step_one_run']:.1f}",
        ),
        (
            f"{n} concurrent runs, durable steps/s",
            f"{k_cost['runs_1_workers']['steps_per_s']:.0f}",
            f"{t['steps_per_s']:.0f}",
        ),
        ("cancel → cancelled, 1 run, p50 / p95 / p99 ms", cell(k_cancel["cancel_1"]), cell(t["cancel_1"])),
        (f"cancel → cancelled, {n} runs, p50 / p95 / p99 ms", cell(k_cancel["cancel_100"]), cell(t["cancel_100"])),
        (
            "run-timeout overshoot, 1 run, p50 / p95 / p99 ms",
            cell(k_cancel["timeout_overshoot"]),
            cell(t["timeout_overshoot"]) + " (server timer, does not wait for the step)",
        ),
        (
            f"run-timeout overshoot beside {n} runs, p50 / p95 / p99 ms",
            cell(k_cancel.get("timeout_overshoot_100")),
            "—",
        ),
        (
            "Kubernetes Job controller overshoot (activeDeadlineSeconds), same plane",
            cell(k_cancel.get("job_overshoot")),
            "",
        ),
    ]
    out = [
        f"Side by side, {started}, {os.cpu_count()} CPUs; Temporal: {t.get('server', '?')}",
        "",
        "| measurement | Kubestep | Temporal dev server + Python SDK |",
        "|---|---:|---:|",
    ]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    text = "\n".join(out)
    (RESULTS / "side_by_side.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
