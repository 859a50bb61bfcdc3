"""The cascade of a stop down a tree of child runs (issue 21), on a fresh local control plane.

The operator and one worker run as local processes (admin credentials, the batch step store). Each round
starts a root ``tree`` run (``kubestep.examples``) whose leaves step forever (50 ms steps) and whose inner
runs wait for their children (durably: no worker holds them), waits until every leaf is Running, then
cancels the root (``spec.cancelRequested``, as ``kubectl patch`` does) and times, from the moment the
patch is sent, when a watch of the tree (its root label) sees each run reach a terminal phase:

* **fan-out**: a root with ``--children`` (100) children, ``--rounds`` times;
* **deep**: a tree ``--depth`` (3) levels deep of ``--fanout`` (4) children per run (4 + 16 + 64 runs).

Reported per shape: every descendant's cancel → terminal latency, p50/p95/p99/max over all rounds; the
time until the *whole* tree was terminal, per round; the same by depth (each level is one more hop:
the operator sees its parent stop and requests the child's cancel); and whether every run ended
Cancelled with the operator as requester.

    python bench/cascade.py [--children 100] [--depth 3] [--fanout 4] [--rounds 5] [--out bench/results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from planes import fresh_plane, machine, namespace_with_kubestep  # bench/planes.py
from stats import summary  # bench/stats.py (the script's folder is on sys.path)

from kubestep import KubestepClient
from kubestep import _protocol as api
from kubestep._protocol import family
from kubestep_dev.controlplane import ControlPlane

HERE = Path(__file__).resolve().parent
PEER_PYTHON = (
    Path(os.environ.get("KUBESTEP_TEMPORAL_DIR", Path.home() / ".cache/kubestep/temporal")) / "venv/bin/python"
)


async def tree_runs(client: KubestepClient, root: str) -> list[dict[str, Any]]:
    page = await client._kube.get(
        api.execution_path(client.namespace), {"labelSelector": f"{family.LABEL_ROOT}={root}"}
    )
    return [r for r in page.get("items") or [] if r["metadata"]["name"] != root]


async def one_round(client: KubestepClient, depth: int, fanout: int, idle: bool) -> dict[str, Any]:
    """One tree: built, then its root cancelled; per run (name → depth, ms to terminal, phase, requester)."""
    expected = sum(fanout**d for d in range(1, depth + 1))
    h = await client.start("tree", {"depth": depth, "fanout": fanout, "seconds": 0.05, "idle": idle})
    ready = api.Phase.WAITING if idle else api.Phase.RUNNING
    deadline = time.monotonic() + 300
    while True:
        runs = await tree_runs(client, h.id)
        leaves = [r for r in runs if family.depth_of(r) == depth]
        if len(runs) == expected and all((r.get("status") or {}).get("phase") == ready for r in leaves):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the tree of {h.id} did not start in 300 s: {len(runs)} of {expected} runs")
        await asyncio.sleep(0.25)
    built = time.monotonic()
    listing = await client._kube.get(api.execution_path(client.namespace), {"limit": 1})
    rv = listing["metadata"]["resourceVersion"]
    seen: dict[str, tuple[int, float, str, str | None]] = {}
    finished: dict[str, float] = {}  # by the run's own status.finishedAt (the peer's close_time's kind)
    legs: dict[str, tuple[float, float]] = {}  # (sent → cancellation.requestedAt, requestedAt → finishedAt)
    names = {r["metadata"]["name"]: family.depth_of(r) for r in runs} | {h.id: 0}

    async def follow() -> None:
        params = {"labelSelector": f"{family.LABEL_ROOT}={h.id}"}
        async for ev in client._kube.watch(api.execution_path(client.namespace), rv, params):
            obj = ev.get("object") or {}
            name = str((obj.get("metadata") or {}).get("name"))
            status = obj.get("status") or {}
            if name in names and name not in seen and status.get("phase") in api.TERMINAL_PHASES:
                at = (time.perf_counter() - t0) * 1000
                requested_by = (status.get("cancellation") or {}).get("requestedBy")
                seen[name] = (names[name], at, status["phase"], requested_by)
                done = api.parse_time(status.get("finishedAt"))
                if done is not None:
                    finished[name] = (done.timestamp() - sent) * 1000
                    asked = api.parse_time((status.get("cancellation") or {}).get("requestedAt"))
                    if asked is not None:
                        # The operator's share (the patch sent → it stopped this run) and the rest.
                        legs[name] = ((asked.timestamp() - sent) * 1000, (done - asked).total_seconds() * 1000)
                if len(seen) == len(names) - 1:  # every descendant (the root is not in the selector)
                    return

    watching = asyncio.ensure_future(follow())
    await asyncio.sleep(0.5)  # the watch is established
    t0, sent = time.perf_counter(), time.time()
    await client._kube.merge_patch(api.execution_path(client.namespace, h.id), {"spec": {"cancelRequested": True}})
    root = await h.wait(timeout=120)
    root_ms = (time.perf_counter() - t0) * 1000
    await asyncio.wait_for(watching, 180)
    return {
        "root": h.id,
        "root_ms": root_ms,
        "root_phase": root.status.phase,
        "runs": seen,
        "finished_ms": finished,
        "legs_ms": legs,
        "built_s": built,
    }


def report(name: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    every = [ms for r in rounds for _, ms, _, _ in r["runs"].values()]
    whole = [max(ms for _, ms, _, _ in r["runs"].values()) for r in rounds]
    by_depth: dict[int, list[float]] = defaultdict(list)
    for r in rounds:
        for depth, ms, _, _ in r["runs"].values():
            by_depth[depth].append(ms)
    phases: dict[str, int] = defaultdict(int)
    requesters: dict[str, int] = defaultdict(int)
    for r in rounds:
        for _, _, phase, by in r["runs"].values():
            phases[phase] += 1
            requesters[str(by)] += 1
    return {
        "shape": name,
        "rounds": len(rounds),
        "descendants_per_round": len(rounds[0]["runs"]),
        "each_ms": summary(every),
        "each_finished_ms": summary([ms for r in rounds for ms in r["finished_ms"].values()]),
        "operator_leg_ms": summary([a for r in rounds for a, _ in r["legs_ms"].values()]),
        "ending_leg_ms": summary([b for r in rounds for _, b in r["legs_ms"].values()]),
        "whole_tree_ms": summary(whole),
        "by_depth_ms": {str(d): summary(v) for d, v in sorted(by_depth.items())},
        "root_ms": summary([r["root_ms"] for r in rounds]),
        "phases": dict(phases),
        "requested_by": dict(requesters),
    }


def peer_table(peer: dict[str, Any]) -> str:
    lines = [
        "| shape (Temporal dev server, same machine, after Kubestep; leaves waiting) | runs per round | each run closed (server close_time): "
        "p50 / p95 / p99 / max ms | whole tree closed: p50 / max ms | statuses |",
        "|---|---:|---|---|---|",
    ]
    for shape, r in peer.items():
        e, w = r["each_ms"], r["whole_tree_ms"]
        lines.append(
            f"| {shape}: depth {r['depth']}, fan-out {r['fanout']} | {r['descendants_per_round']} | "
            f"{e['p50']:.0f} / {e['p95']:.0f} / {e['p99']:.0f} / {e['max']:.0f} | {w['p50']:.0f} / {w['max']:.0f} "
            f"| {r['statuses']} |"
        )
    return "\n".join(lines)


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| shape | runs cancelled per round | each run: p50 / p95 / p99 / max ms | whole tree terminal: p50 / max ms "
        "| by its finishedAt: p50 / p99 ms | legs p50 / p99 ms: stopped by the operator, then ended "
        "| by depth, p50 / p99 ms | phases | requested by |",
        "|---|---:|---|---|---|---|---|---|---|",
    ]
    for r in results:
        e, w = r["each_ms"], r["whole_tree_ms"]
        depths = "; ".join(f"{d}: {s['p50']:.0f} / {s['p99']:.0f}" for d, s in r["by_depth_ms"].items())
        lines.append(
            f"| {r['shape']} ({r['rounds']} rounds) | {r['descendants_per_round']} | {e['p50']:.0f} / {e['p95']:.0f} / "
            f"{e['p99']:.0f} / {e['max']:.0f} | {w['p50']:.0f} / {w['max']:.0f} | "
            f"{r['each_finished_ms']['p50']:.0f} / {r['each_finished_ms']['p99']:.0f} | "
            f"{r['operator_leg_ms']['p50']:.0f} / {r['operator_leg_ms']['p99']:.0f}, "
            f"{r['ending_leg_ms']['p50']:.0f} / {r['ending_leg_ms']['p99']:.0f} | {depths} | {r['phases']} "
            f"| {r['requested_by']} |"
        )
    return "\n".join(lines)


async def measure(plane: ControlPlane, args: argparse.Namespace) -> list[dict[str, Any]]:
    concurrency = max(args.children, args.fanout**args.depth) + 20
    writers = {"KUBESTEP_OPERATOR_WRITERS": str(args.writers)} if args.writers else None
    async with namespace_with_kubestep(
        plane, concurrency=concurrency, worker="cascade-worker", operator_env=writers
    ) as client:
        await asyncio.sleep(2)
        out = []
        for idle in (False, True):
            leaves = "leaves waiting (no worker holds them)" if idle else "leaves stepping every 50 ms"
            for shape, depth, fanout in (
                (f"fan-out: a root with {args.children} children, {leaves}", 1, args.children),
                (f"deep: {args.depth} levels of {args.fanout}, {leaves}", args.depth, args.fanout),
            ):
                rounds = []
                for i in range(args.rounds):
                    print(f"{shape}: round {i + 1} of {args.rounds} ...", file=sys.stderr)
                    rounds.append(await one_round(client, depth, fanout, idle))
                out.append(report(shape, rounds))
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", type=int, default=100)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--fanout", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--writers", type=int, default=0, help="the operator's KUBESTEP_OPERATOR_WRITERS (0: its default)"
    )
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument(
        "--peer", action="store_true", help="then the same on a Temporal dev server (bench/temporal-setup.sh)"
    )
    args = parser.parse_args()
    with fresh_plane("bench-cascade") as plane:
        results = asyncio.run(measure(plane, args))
    doc: dict[str, Any] = {"results": results, "temporal": None, "machine": machine()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    peer_out = Path(args.out) / "temporal_cascade.json"
    if not args.peer and peer_out.exists():
        # The peer's last run (it takes minutes and needs its own server): shown with its own date.
        doc["temporal"] = json.loads(peer_out.read_text())
        doc["temporal_date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(peer_out.stat().st_mtime))
    write(out, doc)  # before the peer: its run may fail without losing these

    if args.peer:
        if not PEER_PYTHON.exists():
            raise SystemExit(f"no Temporal peer at {PEER_PYTHON}: run bench/temporal-setup.sh first")
        shape = ["--children", str(args.children), "--depth", str(args.depth), "--fanout", str(args.fanout)]
        subprocess.run(
            [
                str(PEER_PYTHON),
                str(HERE / "temporal_peer.py"),
                "--cascade",
                "--out",
                str(peer_out),
                "--concurrent",
                str(max(args.children, args.fanout**args.depth) + 10),
                "--rounds",
                str(args.rounds),
                *shape,
            ],
            check=True,
        )
        peer = json.loads(peer_out.read_text())
        doc["temporal"], doc["temporal_date"] = peer, doc["machine"]["date"]
        write(out, doc)


def write(out: Path, doc: dict[str, Any]) -> None:
    (out / "cascade.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = (
        f"Cancel of a root → every run of its tree terminal ({doc['machine']['date']}, {os.cpu_count()} cores; "
        "one operator, one worker, local control plane; inner runs wait for their children durably).\n\n"
        + table(doc["results"])
        + (
            f"\n\nThe peer, measured {doc['temporal_date']}:\n\n" + peer_table(doc["temporal"])
            if doc["temporal"]
            else ""
        )
    )
    (out / "cascade.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
