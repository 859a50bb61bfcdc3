"""The peer: Temporal measured on the same workload as Kubestep's benchmarks (issue 7, goal 6).

Run by ``bench/side_by_side.py`` with the Python of ``bench/temporal-setup.sh`` (``temporalio`` from
PyPI; the dev server is the ``temporal`` CLI built from the Go module ``github.com/temporalio/cli``
v1.5.1, never the SDK's binary download, which cannot work offline). It starts a fresh dev server
(sqlite file without fsync: the closest match to the local etcd's ``--unsafe-no-fsync``) and one worker
process, then measures, with the same step size, concurrency and percentile code as Kubestep's side:

* floor: a signal → the client's own history long poll delivers it (the analogue of patch → watch);
* one run of 10 ms activity steps: time per step (a 50-step run, start to result);
* 100 concurrent runs: steps per second, from their history lengths;
* cancel → CANCELED with 1 and with 100 concurrent runs (``t1``: the close-event long poll returns);
* timeout overshoot: ``close_time − expiration_time`` for runs with a 1 s execution timeout
  (a server timer; Temporal does not wait for the step in flight, Kubestep does).

    ~/.cache/kubestep/temporal/venv/bin/python bench/temporal_peer.py --out FILE [--samples 30] [--concurrent 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import api as _api  # noqa: F401  (loads the generated protos)
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stats import summary
from temporal_workflows import Idle, Steps, StepsInput, Tree, TreeInput, sleep_step

TASK_QUEUE = "bench"
CLI = Path(os.environ.get("TEMPORAL_CLI", Path.home() / ".cache/kubestep/temporal/bin-v1.5.1/temporal"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def worker_main(address: str, slots: int) -> None:
    client = await Client.connect(address)
    async with Worker(
        client,
        task_queue=TASK_QUEUE,
        workflows=[Steps, Idle, Tree],
        activities=[sleep_step],
        max_concurrent_activities=slots,
        max_concurrent_workflow_tasks=slots,
    ):
        await asyncio.Event().wait()


async def floor(client: Client, samples: int) -> list[float]:
    """Signal an idle run (on a queue no worker polls), time until our own history long poll sees it."""
    handle = await client.start_workflow(Idle.run, id=f"idle-{uuid.uuid4().hex[:6]}", task_queue="nobody")
    out = []
    desc = await handle.describe()
    seen = desc.raw_description.workflow_execution_info.history_length
    for i in range(samples):
        t0 = time.perf_counter()
        polled = asyncio.ensure_future(_next_signal(handle, seen))
        await handle.signal(Idle.poke, i)
        seen = await polled
        out.append((time.perf_counter() - t0) * 1000)
    await handle.terminate()
    return out


async def _next_signal(handle: Any, after: int) -> int:
    async for event in handle.fetch_history_events(wait_new_event=True):
        if event.event_id > after and event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            return int(event.event_id)
    raise RuntimeError("history ended")


async def time_per_step(client: Client, steps: int = 50) -> float:
    t0 = time.perf_counter()
    await client.execute_workflow(Steps.run, StepsInput(steps), id=f"one-{uuid.uuid4().hex[:6]}", task_queue=TASK_QUEUE)
    return (time.perf_counter() - t0) * 1000 / steps


async def steps_per_second(client: Client, runs: int, seconds: float) -> float:
    handles = await asyncio.gather(
        *(
            client.start_workflow(Steps.run, StepsInput(-1), id=f"thru-{uuid.uuid4().hex}", task_queue=TASK_QUEUE)
            for _ in range(runs)
        )
    )
    await asyncio.sleep(5)

    async def history() -> int:
        descs = await asyncio.gather(*(h.describe() for h in handles))
        return sum(d.raw_description.workflow_execution_info.history_length for d in descs)

    h0, t0 = await history(), time.monotonic()
    await asyncio.sleep(seconds)
    h1, t1 = await history(), time.monotonic()
    await asyncio.gather(*(h.cancel() for h in handles))
    # An activity step adds 6 events (scheduled, started, completed, and a workflow task's three).
    return (h1 - h0) / 6 / (t1 - t0)


async def cancel_latency(client: Client, concurrent: int, samples: int, steps: int = 300) -> list[float]:
    pool: dict[str, Any] = {}
    closers: dict[str, asyncio.Future[Any]] = {}
    stop = asyncio.Event()

    async def refill() -> None:
        while not stop.is_set():
            for wid in [w for w, f in closers.items() if f.done()]:
                pool.pop(wid, None)
                closers.pop(wid, None)
            while len(pool) < concurrent:
                wid = f"c-{uuid.uuid4().hex}"
                h = await client.start_workflow(Steps.run, StepsInput(steps), id=wid, task_queue=TASK_QUEUE)
                pool[wid] = (h, time.monotonic())
                closers[wid] = asyncio.ensure_future(_closed(h))
            await asyncio.sleep(0.05)

    refiller = asyncio.create_task(refill())
    await asyncio.sleep(3)
    out: list[float] = []
    while len(out) < samples:
        await asyncio.sleep(0.05 + random.random() * 0.05)
        young = [
            w
            for w, (h, born) in pool.items()
            if time.monotonic() - born > 1 and not closers[w].done() and time.monotonic() - born < steps * 0.01 * 2
        ]
        if not young:
            continue
        wid = random.choice(young)
        handle, _ = pool.pop(wid)
        closed = closers.pop(wid)
        t0 = time.perf_counter()
        await handle.cancel()
        status, t1 = await asyncio.wait_for(closed, 180)
        if status == WorkflowExecutionStatus.CANCELED:
            out.append((t1 - t0) * 1000)
    stop.set()
    await refiller
    await asyncio.gather(*(h.cancel() for h, _ in pool.values()), return_exceptions=True)
    return out


async def _closed(handle: Any) -> tuple[Any, float]:
    """The close-event long poll (``handle.result()``): when it returns, and how the run closed."""
    try:
        await handle.result()
    except WorkflowFailureError:
        pass
    except Exception:
        pass
    t = time.perf_counter()
    return (await handle.describe()).status, t


async def timeout_overshoot(client: Client, samples: int, batch: int = 10) -> list[float]:
    out: list[float] = []
    while len(out) < samples:
        handles = await asyncio.gather(
            *(
                client.start_workflow(
                    Steps.run,
                    StepsInput(-1),
                    id=f"to-{uuid.uuid4().hex}",
                    task_queue=TASK_QUEUE,
                    execution_timeout=timedelta(seconds=1),
                )
                for _ in range(batch)
            )
        )
        await asyncio.gather(*(_closed(h) for h in handles))
        for h in handles:
            d = await h.describe()
            async for event in h.fetch_history_events():
                expire = event.workflow_execution_started_event_attributes.workflow_execution_expiration_time
                break
            assert d.close_time is not None
            deadline = expire.ToDatetime().replace(tzinfo=d.close_time.tzinfo)
            out.append((d.close_time - deadline).total_seconds() * 1000)
    return out[:samples]


def _tree_ids(root: str, depth: int, fanout: int) -> dict[str, int]:
    """Every descendant's workflow id (``Tree`` names them ``<parent>-<k>``) and its depth."""
    out: dict[str, int] = {}
    level = [root]
    for d in range(1, depth + 1):
        level = [f"{p}-{k}" for p in level for k in range(fanout)]
        out.update({w: d for w in level})
    return out


async def cascade(client: Client, depth: int, fanout: int, rounds: int, seconds: float = -1) -> dict[str, Any]:
    """Cancel of a root → every descendant closed: per descendant, the server's ``close_time`` less
    the wall time the cancel was sent (Kubestep's ``bench/cascade.py`` reports the same from
    ``finishedAt``, beside the time its watch saw it). Leaves idle by default (``seconds`` < 0): with
    leaves stepping every 50 ms, this dev server started the 100 children at about one a second
    (its throughput here is ~70 steps/s, ``side_by_side.md``), so that shape is not measured."""
    each: list[float] = []
    whole: list[float] = []
    statuses: dict[str, int] = {}
    for _ in range(rounds):
        root = f"tree-{uuid.uuid4().hex[:8]}"
        ids = _tree_ids(root, depth, fanout)
        handle = await client.start_workflow(
            Tree.run, TreeInput(depth, fanout, seconds), id=root, task_queue=TASK_QUEUE
        )
        leaves = [w for w, d in ids.items() if d == depth]
        while True:  # every leaf started and has run a step
            try:
                described = await asyncio.gather(*(client.get_workflow_handle(w).describe() for w in leaves))
                if all(d.status == WorkflowExecutionStatus.RUNNING and d.history_length >= 4 for d in described):
                    break
            except Exception:
                pass
            await asyncio.sleep(0.25)
        t0 = time.time()
        await handle.cancel()
        pending = set(ids)
        closed: dict[str, float] = {}
        while pending:
            described = await asyncio.gather(*(client.get_workflow_handle(w).describe() for w in pending))
            for w, d in zip(list(pending), described, strict=True):
                if d.status != WorkflowExecutionStatus.RUNNING and d.close_time is not None:
                    closed[w] = (d.close_time.timestamp() - t0) * 1000
                    statuses[d.status.name] = statuses.get(d.status.name, 0) + 1
                    pending.discard(w)
            await asyncio.sleep(0.1)
        each += list(closed.values())
        whole.append(max(closed.values()))
    return {
        "descendants_per_round": len(_tree_ids("x", depth, fanout)),
        "each_ms": summary(each),
        "whole_tree_ms": summary(whole),
        "statuses": statuses,
    }


async def measure_cascade(address: str, args: argparse.Namespace) -> dict[str, Any]:
    client = await Client.connect(address)
    out: dict[str, Any] = {}
    for shape, depth, fanout in (("fan-out", 1, args.children), ("deep", args.depth, args.fanout)):
        print(f"temporal: cascade, {shape} ...", file=sys.stderr)
        out[shape] = {"depth": depth, "fanout": fanout, **await cascade(client, depth, fanout, args.rounds)}
    return out


async def measure(address: str, args: argparse.Namespace) -> dict[str, Any]:
    client = await Client.connect(address)
    version = await asyncio.create_subprocess_exec(str(CLI), "--version", stdout=asyncio.subprocess.PIPE)
    r: dict[str, Any] = {"server": (await version.communicate())[0].decode().strip()}
    print("temporal: floor ...", file=sys.stderr)
    r["floor_signal_to_history"] = summary(await floor(client, args.samples * 2))
    print("temporal: one run ...", file=sys.stderr)
    r["ms_per_step_one_run"] = await time_per_step(client)
    print(f"temporal: {args.concurrent} runs, steps/s ...", file=sys.stderr)
    r["steps_per_s"] = await steps_per_second(client, args.concurrent, args.seconds)
    print("temporal: cancel, 1 run ...", file=sys.stderr)
    r["cancel_1"] = summary(await cancel_latency(client, 1, args.samples))
    print(f"temporal: cancel, {args.concurrent} runs ...", file=sys.stderr)
    r["cancel_100"] = summary(await cancel_latency(client, args.concurrent, args.samples))
    print("temporal: timeout overshoot ...", file=sys.stderr)
    r["timeout_overshoot"] = summary(await timeout_overshoot(client, args.samples))
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--concurrent", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--cascade", action="store_true", help="only the child-workflow cancel (bench/cascade.py's peer)")
    ap.add_argument("--children", type=int, default=100)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--fanout", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if args.worker:
        asyncio.run(worker_main(args.worker, args.concurrent + 10))
        return
    if not CLI.exists():
        raise SystemExit(f"no temporal CLI at {CLI}: run bench/temporal-setup.sh")
    port, state = free_port(), Path(tempfile.mkdtemp(prefix="temporal-peer-"))
    address = f"127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            str(CLI),
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--ui-port",
            str(free_port()),
            "--http-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
            "--db-filename",
            str(state / "temporal.db"),
            "--sqlite-pragma",
            "synchronous=OFF",
            "--log-level",
            "error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = None
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        worker = subprocess.Popen(
            [sys.executable, __file__, "--out", args.out, "--worker", address, "--concurrent", str(args.concurrent)]
        )
        time.sleep(3)
        results = asyncio.run((measure_cascade if args.cascade else measure)(address, args))
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results, indent=2))
    finally:
        for p in (worker, server):
            if p is not None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
