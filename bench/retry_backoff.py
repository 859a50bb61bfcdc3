"""What a step retry's backoff costs (issue 21): every backoff is a durable wait, so the next attempt
starts only after the run went Waiting, the operator re-queued it at ``retryAt`` and a worker claimed
and replayed it. This measures by how much the next attempt starts after its recorded ``retryAt``.

On a fresh local control plane (operator and one worker as local processes), ``--runs`` runs of the
``retrying`` example (a step that fails its first two attempts; backoffs of ``--interval`` s, doubling),
``--concurrent`` at a time. Per backoff: ``startedAt`` of the next attempt − ``retryAt`` of the failed
one (both from the records, the worker's clock), p50/p95/p99/max.

    python bench/retry_backoff.py [--runs 40] [--concurrent 10] [--interval 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from planes import fresh_plane, machine, namespace_with_kubestep  # bench/planes.py
from stats import summary  # bench/stats.py (the script's folder is on sys.path)

from kubestep_dev.controlplane import ControlPlane

HERE = Path(__file__).resolve().parent


async def measure(plane: ControlPlane, args: argparse.Namespace) -> dict[str, Any]:
    async with namespace_with_kubestep(plane, concurrency=args.concurrent + 5, worker="retry-worker") as client:
        await asyncio.sleep(2)
        late: list[float] = []
        whole: list[float] = []
        payload = {"succeed_in": 3, "attempts": 3, "interval": args.interval}
        for first in range(0, args.runs, args.concurrent):
            handles = await asyncio.gather(
                *(client.start("retrying", payload) for _ in range(min(args.concurrent, args.runs - first)))
            )
            for e in await asyncio.gather(*(h.wait(timeout=120) for h in handles)):
                history = {s.key: s for s in await client.step_history(e.id)}
                for before, after in (("flaky", "flaky~attempt-2"), ("flaky~attempt-2", "flaky~attempt-3")):
                    due, started = history[before].retry_at, history[after].started_at
                    assert due is not None and started is not None, (e.id, before, after)
                    late.append((started - due).total_seconds() * 1000)
                assert e.status.started_at and e.status.finished_at and e.created_at
                whole.append((e.status.finished_at - e.created_at).total_seconds())
        return {
            "runs": args.runs,
            "concurrent": args.concurrent,
            "backoffs_s": [args.interval, args.interval * 2],
            "next_attempt_after_retry_at_ms": summary(late),
            "run_created_to_finished_s": summary(whole),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--concurrent", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    with fresh_plane("bench-retry") as plane:
        results = asyncio.run(measure(plane, args))
    results["machine"] = machine()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "retry_backoff.json").write_text(json.dumps(results, indent=2) + "\n")
    s = results["next_attempt_after_retry_at_ms"]
    print(
        f"{args.runs} runs, backoffs of {args.interval:g} s and {args.interval * 2:g} s, {args.concurrent} at a time: "
        f"the next attempt started p50 {s['p50']:.0f} / p95 {s['p95']:.0f} / p99 {s['p99']:.0f} / "
        f"max {s['max']:.0f} ms after its retryAt"
    )


if __name__ == "__main__":
    main()
