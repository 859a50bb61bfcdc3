"""Retention steady state: 10,000 runs a day, a day compressed by ``--k`` (issue 19, "Retention").

On a fresh local control plane (``~/.cache/kubestep/bench-retention``, purged first): an operator and
one worker (the default journal store, ``KUBESTEP_STEP_STORE=batch``), and a client that creates
``--per-day`` runs per compressed day, i.e. ``per_day × k / 86400`` runs/s at a steady pace, each the
``steps`` example workflow (``kubestep.examples``: ``--steps`` steps of ``--step-seconds``) with
``spec.ttlSecondsAfterFinished = 86400 / k`` (a day's TTL, compressed alike). With k = 144 a day lasts
10 min: 16.7 runs/s, TTL 600 s, and the steady state holds ``per_day`` finished runs at once.

Every ``--every`` s a sample (``bench/etcd_growth.take``) records the namespace's objects and JSON
bytes by resource (workflowexecutions by phase, stepbatches, configmaps, events, leases; paged lists),
etcd's DB size and keys, writes/s, the CPU of etcd, the apiserver, the controller-manager, the operator
and the worker, the machine's and its load average; and the operator's own counters (runs deleted,
expiries planned, StepBatches collected). The load runs ``--minutes`` (the TTL plus time to show the
plateau), then creation stops and one last sample is taken.

What does not scale with k: the apiserver keeps Events for ``--event-ttl`` (1 h by default, and the
local plane does not change it), the apiserver compacts etcd every 5 min, and the operator's StepBatch
collector works on its own clocks (a sweep every 15 s, a group 60 s after its epoch). Events therefore
pile up for an hour of wall time, i.e. k hours of compressed time; the report gives their rate per run
so the uncompressed steady state (rate × 1 h) can be read off.

    python bench/retention_steady.py [--k 144] [--per-day 10000] [--minutes 17] [--every 30] [--ttl S]

``--ttl`` overrides the compressed day's TTL (when the machine cannot create and finish runs at the rate of
the k whose day fits the benchmark's time: the 2026-12-03 run used ``--k 36 --ttl 600``, a plateau of 2,500
runs, scaled to 10,000 in the report). ``--report-from results/retention_steady.json`` writes the markdown
again (hand-written notes appended to it are lost).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from etcd_growth import interval, machine_load, take  # bench/etcd_growth.py (same folder)
from step_journal import Scraper, free_port, machine, round_floats, total

from kubestep import KubestepClient
from kubestep_dev.controlplane import ControlPlane
from kubestep_dev.local import Proc, start_operator, start_worker
from kubestep_dev.ports import Ports

HERE = Path(__file__).resolve().parent
STATE = Path(os.path.expanduser("~/.cache/kubestep/bench-retention"))
DAY = 86400.0


class Creator:
    """Creates runs at a fixed rate (each on its own schedule, at most ``inflight`` requests open);
    counts what it created, what failed and how far behind the schedule it fell."""

    def __init__(self, client: KubestepClient, rate: float, ttl: int, payload: dict[str, Any], inflight: int) -> None:
        self.client, self.rate, self.ttl, self.payload = client, rate, ttl, payload
        self.sem = asyncio.Semaphore(inflight)
        self.created = 0
        self.errors: dict[str, int] = {}
        self.max_lag = 0.0
        self.create_ms: list[float] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def _one(self) -> None:
        try:
            t = time.perf_counter()
            await self.client.start("steps", self.payload, ttl_seconds_after_finished=self.ttl)
            self.create_ms.append((time.perf_counter() - t) * 1000)
            self.created += 1
        except Exception as e:
            key = type(e).__name__
            self.errors[key] = self.errors.get(key, 0) + 1
        finally:
            self.sem.release()

    async def run(self, seconds: float) -> None:
        t0 = time.monotonic()
        i = 0
        while True:
            due = t0 + i / self.rate
            if due - t0 >= seconds:
                break
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            await self.sem.acquire()
            self.max_lag = max(self.max_lag, time.monotonic() - due)
            task = asyncio.ensure_future(self._one())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            i += 1
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def operator_counters(samples: list[tuple[str, dict[str, str], float]]) -> dict[str, float]:
    return {
        "runs_deleted": total(samples, "kubestep_operator_runs_deleted_total"),
        "expiring": total(samples, "kubestep_operator_expiring_runs"),
        "unfinished": total(samples, "kubestep_operator_unfinished_runs"),
        "batches_collected": total(samples, "kubestep_operator_batches_collected_total"),
        "events_dropped": total(samples, "kubestep_operator_events_dropped_total"),
        "backlog": total(samples, "kubestep_operator_backlog"),
    }


async def steady(plane: ControlPlane, args: argparse.Namespace) -> dict[str, Any]:
    ns = f"retention-{uuid.uuid4().hex[:6]}"
    logs = HERE / "results" / "logs"
    kubeconfig = plane.kubeconfig
    rate = args.per_day * args.k / DAY
    ttl = round(DAY / args.k) if args.ttl is None else args.ttl
    result: dict[str, Any] = {"namespace": ns, "status": "failed", "rate_per_s": rate, "ttl_s": ttl, "samples": []}
    wport, oport = free_port(), free_port()
    scraper = Scraper(plane)
    procs: list[Proc] = []
    # Two clients, so the sampler's lists never wait for a connection behind the creator's requests.
    async with (
        KubestepClient(namespace=ns, kubeconfig=str(kubeconfig)) as client,
        KubestepClient(namespace=ns, kubeconfig=str(kubeconfig)) as maker,
    ):
        await client._kube.create(
            "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        )
        try:
            procs.append(start_operator(kubeconfig, logs, [ns], env={"KUBESTEP_METRICS_PORT": str(oport)}))
            worker = start_worker(
                kubeconfig,
                logs,
                ns,
                "retention",
                concurrency=args.concurrency,
                env={"KUBESTEP_STEP_STORE": "batch", "KUBESTEP_METRICS_PORT": str(wport)},
            )
            procs.append(worker)
            result["worker_log"], result["operator_log"] = str(worker.log), str(procs[0].log)
            for port in (wport, oport):
                for _ in range(200):
                    if not worker.alive() or not procs[0].alive():
                        raise RuntimeError("the worker or the operator exited at start")
                    try:
                        await scraper.port(port)
                        break
                    except httpx.HTTPError:
                        await asyncio.sleep(0.1)
            scraper.pids.update({"worker": worker.pid, "operator": procs[0].pid, "bench": os.getpid()})
            payload = {"count": args.steps, "seconds": args.step_seconds}
            creator = Creator(maker, rate, ttl, payload, args.inflight)

            async def counters() -> dict[str, Any]:
                return {"created": creator.created, "operator": operator_counters(await scraper.port(oport))}

            t0 = time.monotonic()
            prev = await take(scraper, client, wport, t0, counters)
            result["samples"].append(prev)
            load = asyncio.ensure_future(creator.run(args.minutes * 60))
            n = int(args.minutes * 60 // args.every)
            for i in range(1, n + 1):
                await asyncio.sleep(max(0.0, t0 + i * args.every - time.monotonic()))
                if not worker.alive() or not procs[0].alive():
                    raise RuntimeError(f"the worker or the operator exited at {i * args.every} s")
                try:
                    cur = await take(scraper, client, wport, t0, counters)
                except Exception as e:  # a slow list on a starved plane: skip this sample, go on
                    result.setdefault("sample_errors", []).append(f"{i * args.every:g} s: {type(e).__name__}: {e}")
                    print(f"sample at {i * args.every:g} s failed: {e!r}", file=sys.stderr, flush=True)
                    continue
                iv = cur["interval"] = interval(prev, cur)
                iv["steps_per_s"] = (cur["steps"] - prev["steps"]) / iv["seconds"]
                iv["created_per_s"] = (cur["created"] - prev["created"]) / iv["seconds"]
                iv["deleted_per_s"] = (cur["operator"]["runs_deleted"] - prev["operator"]["runs_deleted"]) / iv[
                    "seconds"
                ]
                result["samples"].append(cur)
                o = cur["objects"]
                print(
                    f"t={cur['at_s']:.0f}s created {cur['created']} ({iv['created_per_s']:.1f}/s) "
                    f"deleted {cur['operator']['runs_deleted']:.0f} wfx {o['workflowexecutions']['objects']} "
                    f"{o['workflowexecutions'].get('phases')} sb {o['stepbatches']['objects']} "
                    f"cm {o['configmaps']['objects']} ev {o['events']['objects']} "
                    f"db {cur['etcd']['db_bytes'] / 1e6:.1f} MB (in use {cur['etcd']['db_in_use_bytes'] / 1e6:.1f}) "
                    f"list {cur['listed_s']:.1f}s lag {creator.max_lag:.1f}s load {cur['load']['load1']:.1f}",
                    file=sys.stderr,
                    flush=True,
                )
                prev = cur
            await asyncio.wait_for(load, 120)
            result["creator"] = {
                "created": creator.created,
                "errors": creator.errors,
                "max_lag_s": creator.max_lag,
                "create_ms_p50": sorted(creator.create_ms)[len(creator.create_ms) // 2] if creator.create_ms else None,
            }
            first, last = result["samples"][0], result["samples"][-1]
            result["window"] = interval(first, last)
            result["status"] = "ok"
        except Exception as e:
            result["error"] = f"{type(e).__name__}: {e}"
            result["traceback"] = traceback.format_exc()
            print(f"FAILED: {result['error']}", file=sys.stderr, flush=True)
        finally:
            for p in reversed(procs):
                p.stop(timeout=20)
            await scraper.aclose()
    return result


# ---- report -----------------------------------------------------------------------------------------


def _mb(x: float) -> str:
    return f"{x / 1e6:.1f}"


def table(samples: list[dict[str, Any]]) -> list[str]:
    head = (
        "| t (s) | created | runs/s created / deleted | wfx: all (Completed / other) MB | stepbatches n (MB) "
        "| configmaps n (MB) | events n (MB) | leases n | etcd DB (in use) MB | etcd keys | writes/s "
        "| CPU cores: apiserver / etcd / operator / worker / ctrl-mgr | machine busy (of 2) | load1 / CPU pressure |"
    )
    out = [head, "|" + "---:|" * (head.count("|") - 1)]
    for s in samples:
        iv, o, e = s.get("interval") or {}, s["objects"], s["etcd"]
        c = iv.get("cpu_cores") or {}
        wfx = o["workflowexecutions"]
        done = (wfx.get("phases") or {}).get("Completed", 0)
        out.append(
            "| "
            + " | ".join(
                [
                    f"{s['at_s']:.0f}",
                    f"{s.get('created', 0)}",
                    f"{iv['created_per_s']:.1f} / {iv['deleted_per_s']:.1f}" if iv else "—",
                    f"{wfx['objects']} ({done} / {wfx['objects'] - done}) {_mb(wfx['bytes'])}",
                    *(f"{o[k]['objects']} ({_mb(o[k]['bytes'])})" for k in ("stepbatches", "configmaps", "events")),
                    f"{o['leases']['objects']}",
                    f"{_mb(e['db_bytes'])} ({_mb(e['db_in_use_bytes'])})",
                    f"{e['keys']:.0f}",
                    f"{iv['writes_per_s']:.0f}" if iv else "—",
                    " / ".join(
                        f"{c.get(k, 0):.2f}"
                        for k in ("kube-apiserver", "etcd", "operator", "worker", "kube-controller-manager")
                    )
                    if c
                    else "—",
                    f"{iv['machine_cores_busy']:.2f}" if iv else "—",
                    f"{s['load']['load1']:.1f}"
                    + (f" / {s['load']['cpu_pressure_avg10']:.0f}%" if "cpu_pressure_avg10" in s["load"] else ""),
                ]
            )
            + " |"
        )
    return out


def growth(samples: list[dict[str, Any]], seconds: float) -> dict[str, dict[str, float]]:
    """Objects and bytes per minute by resource over the last ``seconds`` of samples (the plateau test)."""
    last = samples[-1]
    base = next((s for s in samples if s["at_s"] >= last["at_s"] - seconds), samples[0])
    dt = (last["at_s"] - base["at_s"]) / 60 or 1.0
    return {
        k: {
            "objects_per_min": (last["objects"][k]["objects"] - base["objects"][k]["objects"]) / dt,
            "bytes_per_min": (last["objects"][k]["bytes"] - base["objects"][k]["bytes"]) / dt,
            "from_s": base["at_s"],
            "to_s": last["at_s"],
        }
        for k in last["objects"]
    } | {
        "etcd_db": {
            "bytes_per_min": (last["etcd"]["db_bytes"] - base["etcd"]["db_bytes"]) / dt,
            "in_use_bytes_per_min": (last["etcd"]["db_in_use_bytes"] - base["etcd"]["db_in_use_bytes"]) / dt,
            "keys_per_min": (last["etcd"]["keys"] - base["etcd"]["keys"]) / dt,
        }
    }


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    r = results["run"]
    lines = [
        f"# Retention steady state, {results['machine']['date']}\n",
        f"{args.per_day:,} runs/day compressed by k = {args.k:g}: **{r['rate_per_s']:.2f} runs/s created, "
        f"`ttlSecondsAfterFinished` = {r['ttl_s']} s**; each run the `steps` example ({args.steps} steps of "
        f"{args.step_seconds * 1000:g} ms); one worker (batch store, concurrency {args.concurrency}), operator "
        f"running; {args.minutes:g} min of load, a sample every {args.every:g} s; "
        f"{results['machine']['cpus']} cores shared with other work (load average before "
        f"{results['load_before']['load1']:.1f}, at the end {results['machine']['loadavg_at_end'][0]:.1f}); "
        "`bench/retention_steady.py`. Object bytes: the JSON the apiserver returns (paged lists); etcd figures "
        "from its own /metrics; the apiserver compacts etcd every 5 min (its default), the local plane "
        "never defragments, and Events live 1 h (the apiserver's default `--event-ttl`).\n",
    ]
    if abs(r["ttl_s"] - DAY / args.k) > 1:
        lines.append(
            f"**The TTL is not a compressed day** (86400/k = {DAY / args.k:.0f} s): the rate of k = {args.k:g} with a "
            f"{r['ttl_s']} s TTL, so the steady state holds rate × TTL = {r['rate_per_s'] * r['ttl_s']:,.0f} finished "
            "runs, not 10,000; the figures for 10,000 are scaled from it below.\n"
        )
    if r["status"] != "ok":
        lines.append(f"**failed**: `{r.get('error')}`\n")
    samples = r["samples"]
    if samples:
        lines += table(samples)
    if len(samples) > 2:
        last = samples[-1]
        g = growth(samples, args.plateau)
        lines.append(
            f"\nGrowth over the last {g['etcd_db'] and (last['at_s'] - g['workflowexecutions']['from_s']):.0f} s "
            "(per minute): "
            + ", ".join(
                f"{k} {v['objects_per_min']:+.0f} objects ({v['bytes_per_min'] / 1e3:+,.0f} kB)"
                for k, v in g.items()
                if k != "etcd_db"
            )
            + f"; etcd DB {g['etcd_db']['bytes_per_min'] / 1e6:+.2f} MB (in use "
            f"{g['etcd_db']['in_use_bytes_per_min'] / 1e6:+.2f} MB), keys {g['etcd_db']['keys_per_min']:+.0f}."
        )
        w = r.get("window")
        if w:
            lines.append(
                f"\nOver the whole load ({w['seconds']:.0f} s): {w['writes_per_s']:.0f} writes/s ("
                + ", ".join(f"{k} {v:.1f}" for k, v in w["writes_per_s_by_resource"].items())
                + "); CPU (cores): "
                + ", ".join(f"{k} {v:.2f}" for k, v in w["cpu_cores"].items())
                + f"; machine {w['machine_cores_busy']:.2f} busy, {w['others_cores_busy']:.2f} by other processes."
            )
        c = r.get("creator")
        if c:
            lines.append(
                f"\nCreated {c['created']} runs (errors {c['errors'] or 'none'}; at most {c['max_lag_s']:.1f} s behind "
                f"the schedule; create p50 {c['create_ms_p50']:.0f} ms). Operator at the end: "
                + ", ".join(f"{k} {v:.0f}" for k, v in last["operator"].items())
                + "."
            )
        lines += steady_state(r, args)
    if r.get("sample_errors"):
        lines.append(f"\nSamples skipped (a list timed out): {'; '.join(r['sample_errors'])}.")
    return "\n".join(lines)


def steady_state(r: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The plateau's mean (samples in the last ``--plateau`` s), per live run, and scaled to 10,000
    finished runs (a day's TTL at 10,000 runs/day), Events at the uncompressed rate for their 1 h TTL."""
    samples = r["samples"]
    last = samples[-1]["at_s"]
    plateau = [s for s in samples if s["at_s"] >= last - args.plateau and s["at_s"] >= r["ttl_s"]]
    if not plateau:
        return ["\nNo sample after the first TTL: no steady state to report."]
    n = len(plateau)

    def mean(f: Callable[[dict[str, Any]], float]) -> float:
        return sum(f(s) for s in plateau) / n

    runs = mean(lambda s: s["objects"]["workflowexecutions"]["objects"])
    out = [
        f"\n### Steady state: mean of {n} samples from t = {plateau[0]['at_s']:.0f} s to {last:.0f} s\n",
        "| resource | objects | JSON MB | per live run (bytes) | for 10,000 runs/day, a day's TTL (objects, MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    created = samples[-1]["created"]
    events_per_run = samples[-1]["objects"]["events"]["objects"] / max(1, created)
    real_rate = args.per_day / DAY
    for k in ("workflowexecutions", "stepbatches", "configmaps", "events", "leases"):
        objs = mean(lambda s, k=k: s["objects"][k]["objects"])
        size = mean(lambda s, k=k: s["objects"][k]["bytes"])
        if k == "workflowexecutions":
            scaled = f"{10_000:,} ({size / runs * 10_000 / 1e6:.1f})"
        elif k == "events":
            ev_bytes = size / objs if objs else 0
            live = events_per_run * real_rate * 3600
            scaled = f"{live:,.0f} ({live * ev_bytes / 1e6:.2f}) (1 h of Events at {real_rate:.3f} runs/s)"
        elif k == "stepbatches":
            # batches live = creation rate of batches × how long one stays (the collector's clocks, not the TTL)
            per_run = samples[-1]["operator"]["batches_collected"] / max(1, samples[-1]["created"])
            stay = objs / (r["rate_per_s"] * per_run) if per_run else 0.0
            live = real_rate * per_run * stay
            scaled = (
                f"{live:,.0f} ({live * (size / objs if objs else 0) / 1e6:.2f}) ({per_run:.1f} batches per run, "
                f"each kept ~{stay:.0f} s, at {real_rate:.3f} runs/s)"
            )
        else:
            scaled = f"{objs:,.0f} ({size / 1e6:.2f}) (not per run)"
        out.append(f"| {k} | {objs:,.0f} | {size / 1e6:.2f} | {size / runs if runs else 0:,.0f} | {scaled} |")
    w = r.get("window") or {}
    if w:
        out.append(
            f"\netcd put {w['etcd_put_bytes_per_s'] / r['rate_per_s'] / 1e3:,.1f} kB per run created "
            f"({w['etcd_put_bytes_per_s'] / 1e3:,.0f} kB/s), {w['writes_per_s'] / r['rate_per_s']:.1f} API writes per "
            "run; CPU per run created (ms): "
            + ", ".join(f"{k} {1000 * v / r['rate_per_s']:.0f}" for k, v in w["cpu_cores"].items())
            + "."
        )
    db = mean(lambda s: s["etcd"]["db_bytes"])
    in_use = mean(lambda s: s["etcd"]["db_in_use_bytes"])
    out.append(
        f"\netcd over the plateau: DB {db / 1e6:.1f} MB ({in_use / 1e6:.1f} MB in use), {mean(lambda s: s['etcd']['keys']):,.0f} "
        f"keys; {events_per_run:.2f} Events per run created ({samples[-1]['objects']['events']['objects']:,} "
        f"for {created:,} runs: none has expired yet, their TTL is 1 h of wall time)."
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=float, default=144, help="a day lasts 86400/k s")
    ap.add_argument("--per-day", type=int, default=10_000)
    ap.add_argument("--ttl", type=int, default=None, help="override the TTL (default 86400/k)")
    ap.add_argument("--minutes", type=float, default=17)
    ap.add_argument("--every", type=float, default=30)
    ap.add_argument("--plateau", type=float, default=300, help="seconds at the end the growth is judged over")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--step-seconds", type=float, default=0.01)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--inflight", type=int, default=32, help="create requests open at most")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--name", default="retention_steady")
    ap.add_argument("--report-from", help="write the markdown again from this results JSON, measuring nothing")
    args = ap.parse_args()
    if args.report_from:
        results = json.loads(Path(args.report_from).read_text())
        args = argparse.Namespace(**{**results["args"], "plateau": args.plateau, "out": args.out})
        text = report(results, args)
        (Path(args.out) / f"{args.name}.md").write_text(text + "\n")
        print(text)
        return
    started = time.monotonic()
    results: dict[str, Any] = {"args": vars(args), "load_before": machine_load()}
    ControlPlane(STATE, progress=None).down(purge=True)
    plane = ControlPlane(STATE, ports=Ports.free())
    plane.up()
    try:
        results["run"] = asyncio.run(steady(plane, args))
    finally:
        plane.down()
    results["machine"] = machine(started)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(round_floats(results), indent=2) + "\n")
    text = report(results, args)
    (out / f"{args.name}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
