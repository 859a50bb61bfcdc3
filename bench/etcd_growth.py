"""etcd's database size after 10 minutes at the goal-1 rate (issue 19, goal 4).

On a fresh local control plane for each store in ``--stores`` (``~/.cache/kubestep/bench-etcd-growth``,
purged first, so each store's curve starts from an empty etcd): an operator and one worker
(``KUBESTEP_STEP_STORE=<store>``, concurrency runs + 10) run ``--runs`` concurrent ``until-cancelled``
runs of 10 ms steps (``bench/step_journal.py``'s goal-1 load) for ``--minutes``. Every ``--every`` s a
sample records:

* etcd (its own ``/metrics``): ``etcd_mvcc_db_total_size_in_bytes`` (the bbolt file: never shrinks
  without a defrag, which nothing here runs), ``..._in_use_in_bytes`` (pages holding data), keys,
  current and compacted revision (``etcd_debugging_mvcc_current_revision``, ``..._compact_revision``),
  bytes put so far;
* the namespace's objects and their JSON bytes by resource (workflowexecutions, stepbatches,
  configmaps, events, leases), listed in pages of 500;
* steps/s (the worker's ``kubestep_worker_steps_total{state="Completed"}``) and API writes/s
  (``apiserver_request_total``, mutating verbs) since the previous sample;
* the CPU of etcd, the apiserver, the controller-manager, the operator and the worker, the machine's
  (all cores) and the load average (``step_journal.cpu_now``).

Compaction: the local plane starts the apiserver with its defaults (no ``--etcd-compaction-interval``,
so 5 min) and etcd with no auto-compaction. The apiserver's compactor, every 5 min from its start,
compacts etcd to the revision it saw at its previous tick (``k8s.io/apiserver/pkg/storage/etcd3/compact.go``):
the first tick compacts nothing, each later one drops the history older than 5–10 min. The samples say
when a compaction happened (the compacted revision moves); the times are given from the apiserver's start.

    python bench/etcd_growth.py [--runs 100] [--minutes 10] [--every 30] [--stores batch]
    python bench/etcd_growth.py --stores status --merge   # adds a store to the same results file

Each store takes ~11 min (start-up, 10 min of samples, cancelling the runs); ``--stores batch,status``
runs both in one go (~22 min). ``--report-from results/etcd_growth.json`` writes the markdown again.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from step_journal import (  # bench/step_journal.py: the benchmark of record's scrapers and CPU helpers
    Scraper,
    by,
    completed,
    end_all,
    etcd_counters,
    free_port,
    machine,
    parsed,
    round_floats,
    total,
    wait_steps,
    writes,
)

from kubestep import KubestepClient
from kubestep import _protocol as api
from kubestep._protocol.batches import batch_path
from kubestep_dev.controlplane import ControlPlane
from kubestep_dev.local import Proc, start_operator, start_worker
from kubestep_dev.ports import Ports

HERE = Path(__file__).resolve().parent
STATE = Path(os.path.expanduser("~/.cache/kubestep/bench-etcd-growth"))
RESOURCES = ("workflowexecutions", "stepbatches", "configmaps", "events", "leases")


# ---- shared with bench/retention_steady.py ----------------------------------------------------------


def resource_paths(ns: str) -> dict[str, str]:
    return {
        "workflowexecutions": api.execution_path(ns),
        "stepbatches": batch_path(ns),
        "configmaps": f"/api/v1/namespaces/{ns}/configmaps",
        "events": f"/api/v1/namespaces/{ns}/events",
        "leases": f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
    }


async def objects(client: KubestepClient, page: int = 500) -> dict[str, dict[str, Any]]:
    """The namespace's objects and their size as JSON (as ``step_journal.namespace_objects``), listed
    in pages of ``page`` so 10,000 runs never make one giant response; with the seconds each took."""
    out: dict[str, dict[str, Any]] = {}
    for resource, path in resource_paths(client.namespace).items():
        t = time.monotonic()
        n = size = 0
        phases: dict[str, int] = {}
        params: dict[str, str] = {"limit": str(page)}
        while True:
            body = await client._kube.get(path, params)
            for o in body.get("items") or []:
                n += 1
                size += len(json.dumps(o))
                if resource == "workflowexecutions":
                    phase = str((o.get("status") or {}).get("phase") or "none")
                    phases[phase] = phases.get(phase, 0) + 1
                    # journal ConfigMaps the run's status lists (the others are merged-away orphans)
                    phases["_journal_chunks_listed"] = phases.get("_journal_chunks_listed", 0) + len(
                        (o.get("status") or {}).get("journal") or []
                    )
            cont = (body.get("metadata") or {}).get("continue")
            if not cont:
                break
            params = {"limit": str(page), "continue": cont}
        out[resource] = {"objects": n, "bytes": size, "list_s": time.monotonic() - t}
        if resource == "workflowexecutions":
            out[resource]["phases"] = phases
    return out


def etcd_more(samples: list[tuple[str, dict[str, str], float]]) -> dict[str, float]:
    """``step_journal.etcd_counters`` plus revisions, the quota and the apiserver-side figures."""
    return {
        **etcd_counters(samples),
        "current_revision": total(samples, "etcd_debugging_mvcc_current_revision"),
        "compact_revision": total(samples, "etcd_debugging_mvcc_compact_revision"),
        "quota_bytes": total(samples, "etcd_server_quota_backend_bytes"),
        "compactions_keys": total(samples, "etcd_debugging_mvcc_db_compaction_keys_total"),
    }


def machine_load() -> dict[str, float]:
    """Load averages, and the share of the last 10 s some task waited for a CPU (PSI, when the kernel has it)."""
    la = os.getloadavg()
    out = {"load1": la[0], "load5": la[1], "load15": la[2]}
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0].split()
        out["cpu_pressure_avg10"] = float(some[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        pass
    return out


def interval(prev: dict[str, Any], cur: dict[str, Any]) -> dict[str, Any]:
    """Rates between two samples: CPU cores by component, the machine's busy cores, writes/s."""
    dt = cur["t"] - prev["t"]
    c0, c1 = prev["cpu"], cur["cpu"]
    cpu = {k: (c1[k] - c0[k]) / dt for k in c1 if k in c0 and not k.startswith("_machine")}
    busy = (c1["_machine_busy"] - c0["_machine_busy"]) / dt
    w0, w1 = prev["writes"], cur["writes"]
    return {
        "seconds": dt,
        "writes_per_s": (w1.get("_total", 0) - w0.get("_total", 0)) / dt,
        "writes_per_s_by_resource": {
            k: (w1.get(k, 0) - w0.get(k, 0)) / dt
            for k in sorted(set(w0) | set(w1))
            if " " not in k and k != "_total" and w1.get(k, 0) - w0.get(k, 0)
        },
        "cpu_cores": cpu,
        "machine_cores_busy": busy,
        "others_cores_busy": busy - sum(cpu.values()),
        "etcd_put_bytes_per_s": (cur["etcd"]["put_bytes"] - prev["etcd"]["put_bytes"]) / dt,
        "etcd_wal_bytes_per_s": (cur["etcd"]["wal_bytes"] - prev["etcd"]["wal_bytes"]) / dt,
    }


async def take(
    scraper: Scraper,
    client: KubestepClient,
    worker_port: int | None,
    t0: float,
    extra: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """One sample: metrics and CPU together first (and ``extra``'s figures), then the (slower) listing
    of the namespace."""
    snap = parsed(await scraper.snapshot(worker_port))
    more = await extra() if extra else {}
    t = time.monotonic()
    objs = await objects(client)
    return {
        **more,
        "listed_s": time.monotonic() - t,
        "t": snap["t"],
        "at_s": snap["t"] - t0,
        "cpu": snap["cpu"],
        "load": machine_load(),
        "steps": completed(snap["worker"]) if worker_port else None,
        "writes": writes(snap["apiserver"]),
        "etcd": etcd_more(snap["etcd"]),
        "storage_objects": {
            k: v
            for k, v in by(snap["apiserver"], "apiserver_storage_objects", "resource").items()
            if any(r in k for r in RESOURCES)
        },
        "storage_size_bytes": total(snap["apiserver"], "apiserver_storage_size_bytes"),
        "objects": objs,
        "list_s": sum(v["list_s"] for v in objs.values()),
    }


def apiserver_started(plane: ControlPlane) -> float | None:
    """Wall time the apiserver started (its pid's start time), for placing the compactor's ticks."""
    try:
        pid = int(json.loads((plane.state_dir / "run" / "kube-apiserver.pid").read_text())["pid"])
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, KeyError, StopIteration, IndexError):
        return None


# ---- the benchmark ----------------------------------------------------------------------------------


async def grow(plane: ControlPlane, store: str, args: argparse.Namespace) -> dict[str, Any]:
    ns = f"growth-{store}-{uuid.uuid4().hex[:6]}"
    logs = HERE / "results" / "logs"
    kubeconfig = plane.kubeconfig
    result: dict[str, Any] = {"store": store, "namespace": ns, "status": "failed", "samples": []}
    wport, oport = free_port(), free_port()
    scraper = Scraper(plane)
    procs: list[Proc] = []
    names: list[str] = []
    api_start = apiserver_started(plane)
    async with KubestepClient(namespace=ns, kubeconfig=str(kubeconfig)) as client:
        await client._kube.create(
            "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        )
        try:
            procs.append(start_operator(kubeconfig, logs, [ns], env={"KUBESTEP_METRICS_PORT": str(oport)}))
            worker = start_worker(
                kubeconfig,
                logs,
                ns,
                f"growth-{store}",
                concurrency=args.runs + 10,
                env={"KUBESTEP_STEP_STORE": store, "KUBESTEP_METRICS_PORT": str(wport)},
            )
            procs.append(worker)
            result["worker_log"], result["operator_log"] = str(worker.log), str(procs[0].log)
            for _ in range(200):
                if not worker.alive():
                    raise RuntimeError(f"worker exited with {worker.popen.returncode} at start")
                try:
                    await scraper.port(wport)
                    break
                except httpx.HTTPError:
                    await asyncio.sleep(0.1)
            scraper.pids.update({"worker": worker.pid, "operator": procs[0].pid, "bench": os.getpid()})
            handles = await asyncio.gather(
                *(client.start("until-cancelled", {"seconds": 0.01}) for _ in range(args.runs))
            )
            names = [h.id for h in handles]
            await wait_steps(scraper, port=wport, worker=worker, at_least=args.runs, timeout=60)
            t0 = time.monotonic()
            wall0 = time.time()
            result["load_started_after_apiserver_s"] = wall0 - api_start if api_start else None
            prev = await take(scraper, client, wport, t0)
            result["samples"].append(prev)
            print(f"[{store}] t=0 db {prev['etcd']['db_bytes'] / 1e6:.1f} MB", file=sys.stderr, flush=True)
            n = int(args.minutes * 60 // args.every)
            for i in range(1, n + 1):
                await asyncio.sleep(max(0.0, t0 + i * args.every - time.monotonic()))
                if not worker.alive():
                    raise RuntimeError(f"worker exited with {worker.popen.returncode} at {i * args.every} s")
                try:
                    cur = await take(scraper, client, wport, t0)
                except Exception as e:  # a slow list on a starved plane: skip this sample, go on
                    result.setdefault("sample_errors", []).append(f"{i * args.every:g} s: {type(e).__name__}: {e}")
                    print(f"[{store}] sample at {i * args.every:g} s failed: {e!r}", file=sys.stderr, flush=True)
                    continue
                cur["interval"] = interval(prev, cur)
                cur["interval"]["steps_per_s"] = (cur["steps"] - prev["steps"]) / cur["interval"]["seconds"]
                result["samples"].append(cur)
                print(
                    f"[{store}] t={cur['at_s']:.0f}s {cur['interval']['steps_per_s']:.0f} steps/s "
                    f"{cur['interval']['writes_per_s']:.0f} writes/s db {cur['etcd']['db_bytes'] / 1e6:.1f} MB "
                    f"(in use {cur['etcd']['db_in_use_bytes'] / 1e6:.1f}) compact rev "
                    f"{cur['etcd']['compact_revision']:.0f} load {cur['load']['load1']:.1f}",
                    file=sys.stderr,
                    flush=True,
                )
                prev = cur
            first, last = result["samples"][0], result["samples"][-1]
            result["window"] = {
                **interval(first, last),
                "steps": last["steps"] - first["steps"],
                "steps_per_s": (last["steps"] - first["steps"]) / (last["t"] - first["t"]),
            }
            result["status"] = "ok"
        except Exception as e:
            result["error"] = f"{type(e).__name__}: {e}"
            result["traceback"] = traceback.format_exc()
            print(f"[{store}] FAILED: {result['error']}", file=sys.stderr, flush=True)
            if procs[1:]:
                result["worker_log_tail"] = procs[1].tail(60)
        finally:
            try:
                if names:
                    stuck = await asyncio.wait_for(end_all(client, names), 150)
                    if stuck:
                        result["runs_not_ended_at_cleanup"] = stuck
                    await asyncio.sleep(5)
                    after = await take(scraper, client, None, t0 if result["samples"] else time.monotonic())
                    result["all_ended"] = after
            except Exception as e:
                result["cleanup_error"] = f"{type(e).__name__}: {e}"
            for p in reversed(procs):
                p.stop(timeout=20)
            await scraper.aclose()
    return result


# ---- report -----------------------------------------------------------------------------------------


def _mb(x: float) -> str:
    return f"{x / 1e6:.1f}"


def report(results: dict[str, Any]) -> str:
    lines: list[str] = []
    for r in results["stores"]:
        name = r["store"].split(",")[0]
        lines.append(f"\n## {r['store']} (`KUBESTEP_STEP_STORE={name}`)\n")
        if r["status"] != "ok":
            lines.append(f"**failed**: `{r.get('error')}` (worker log `{r.get('worker_log')}`).\n")
        samples = r["samples"]
        if not samples:
            continue
        off = r.get("load_started_after_apiserver_s")
        head = (
            "| t (s) | apiserver up (s) | steps/s | writes/s | etcd DB MB | in use MB | keys | compacted rev / current rev "
            "| wfx n (MB) | stepbatches n (MB) | configmaps n (MB) | events n (MB) | leases n "
            "| CPU cores: apiserver / etcd / operator / worker | machine busy (of 2) | load1 / CPU pressure |"
        )
        lines += [head, "|" + "---:|" * (head.count("|") - 1)]
        for s in samples:
            iv = s.get("interval") or {}
            o, e, c = s["objects"], s["etcd"], iv.get("cpu_cores") or {}
            lines.append(
                "| "
                + " | ".join(
                    [
                        f"{s['at_s']:.0f}",
                        f"{s['at_s'] + off:.0f}" if off is not None else "—",
                        f"{iv['steps_per_s']:.0f}" if iv else "—",
                        f"{iv['writes_per_s']:.0f}" if iv else "—",
                        _mb(e["db_bytes"]),
                        _mb(e["db_in_use_bytes"]),
                        f"{e['keys']:.0f}",
                        f"{e['compact_revision']:.0f} / {e['current_revision']:.0f}",
                        *(
                            f"{o[k]['objects']} ({_mb(o[k]['bytes'])})"
                            for k in ("workflowexecutions", "stepbatches", "configmaps", "events")
                        ),
                        f"{o['leases']['objects']}",
                        " / ".join(f"{c.get(k, 0):.2f}" for k in ("kube-apiserver", "etcd", "operator", "worker"))
                        if c
                        else "—",
                        f"{iv['machine_cores_busy']:.2f}" if iv else "—",
                        f"{s['load']['load1']:.1f}"
                        + (f" / {s['load']['cpu_pressure_avg10']:.0f}%" if "cpu_pressure_avg10" in s["load"] else ""),
                    ]
                )
                + " |"
            )
        w = r.get("window")
        last = samples[-1]
        if w:
            live = sum(v["bytes"] for v in last["objects"].values())
            lines.append(
                f"\nWindow {w['seconds']:.0f} s: **{w['steps']:.0f} steps, {w['steps_per_s']:.0f} steps/s, "
                f"{w['writes_per_s']:.0f} writes/s** ("
                + ", ".join(f"{k} {v:.1f}" for k, v in w["writes_per_s_by_resource"].items())
                + f"); etcd put {w['etcd_put_bytes_per_s'] / 1e3:,.0f} kB/s, WAL {w['etcd_wal_bytes_per_s'] / 1e3:,.0f} kB/s. "
                f"**etcd DB at the end: {_mb(last['etcd']['db_bytes'])} MB ({_mb(last['etcd']['db_in_use_bytes'])} MB in use)**, "
                f"quota {_mb(last['etcd']['quota_bytes'])} MB; the namespace's live objects: {live / 1e6:.1f} MB of JSON. "
                "CPU over the window (cores): "
                + ", ".join(f"{k} {v:.2f}" for k, v in w["cpu_cores"].items())
                + f"; machine {w['machine_cores_busy']:.2f} of {results['machine']['cpus']} busy, "
                f"{w['others_cores_busy']:.2f} by other processes."
            )
        listed = last["objects"]["workflowexecutions"].get("phases", {}).get("_journal_chunks_listed")
        if listed is not None:
            lines.append(
                f"\nJournal ConfigMaps the runs' `status.journal` lists at the end: {listed:,} of the namespace's "
                f"{last['objects']['configmaps']['objects']:,} ConfigMaps (the others: merged-away chunks, kept until "
                "their run is deleted, and `kube-root-ca.crt`)."
            )
        run = r.get("run")
        if run:
            lines.append(
                f"\nThis store ran on its own, ended {run.get('date')}: load average before "
                f"{(run.get('load_before') or {}).get('load1', float('nan')):.1f}, at the end "
                f"{(run.get('loadavg_at_end') or [float('nan')])[0]:.1f}."
            )
        ae = r.get("all_ended")
        if ae:
            lines.append(
                f"\nAfter every run was cancelled (+5 s): etcd DB {_mb(ae['etcd']['db_bytes'])} MB "
                f"({_mb(ae['etcd']['db_in_use_bytes'])} in use); objects: "
                + ", ".join(f"{k} {v['objects']} ({_mb(v['bytes'])} MB)" for k, v in ae["objects"].items())
                + "."
            )
        compactions = [
            (b["at_s"], a["etcd"]["compact_revision"], b["etcd"]["compact_revision"])
            for a, b in itertools.pairwise(samples)
            if b["etcd"]["compact_revision"] != a["etcd"]["compact_revision"]
        ]
        lines.append(
            "\nCompactions seen (compacted revision moved, by the sample at t): "
            + (", ".join(f"t={t:.0f} s: {a:.0f} → {b:.0f}" for t, a, b in compactions) or "none")
            + (f"; the load started {off:.0f} s after the apiserver." if off is not None else ".")
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--every", type=float, default=30, help="seconds between samples")
    ap.add_argument("--stores", default="batch")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--name", default="etcd_growth", help="results file name (without extension)")
    ap.add_argument("--merge", action="store_true", help="keep the other stores of an earlier results file")
    ap.add_argument("--report-from", help="write the markdown again from this results JSON, measuring nothing")
    args = ap.parse_args()
    if args.report_from:
        results = json.loads(Path(args.report_from).read_text())
        write_report(
            results, argparse.Namespace(**{**vars(args), "runs": results["runs"], "minutes": results["minutes"]})
        )
        return
    started = time.monotonic()
    results: dict[str, Any] = {
        "runs": args.runs,
        "minutes": args.minutes,
        "every": args.every,
        "load_before": machine_load(),
        "stores": [],
    }
    for store in (s.strip() for s in args.stores.split(",") if s.strip()):
        ControlPlane(STATE, progress=None).down(purge=True)  # a fresh, empty etcd for each store
        plane = ControlPlane(STATE, ports=Ports.free())
        plane.up()
        try:
            results["stores"].append(asyncio.run(grow(plane, store, args)))
        except Exception as e:
            results["stores"].append(
                {"store": store, "status": "failed", "error": f"{type(e).__name__}: {e}", "samples": []}
            )
        finally:
            plane.down()
    results["machine"] = machine(started)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge and (out / f"{args.name}.json").exists():
        # Another store's earlier run (--stores one at a time): kept, its own run's context with it.
        earlier = json.loads((out / f"{args.name}.json").read_text())
        mine = {r["store"] for r in results["stores"]}
        kept = [
            {**r, "run": r.get("run") or earlier.get("machine")} for r in earlier["stores"] if r["store"] not in mine
        ]
        for r in results["stores"]:
            r["run"] = {**results["machine"], "load_before": results["load_before"]}
        results["stores"] = kept + results["stores"]
    (out / f"{args.name}.json").write_text(json.dumps(round_floats(results), indent=2) + "\n")
    write_report(results, args)


def write_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    text = (
        f"# etcd growth at the goal-1 rate, {results['machine']['date']}\n\n"
        f"{args.runs} concurrent `until-cancelled` runs of 10 ms steps, one worker, operator running, "
        f"{args.minutes:g} min per store on a fresh plane, a sample every {results['every']:g} s; "
        f"{results['machine']['cpus']} cores shared with other work (the load of each store's run below, and "
        "beside every sample); "
        "`bench/etcd_growth.py`. Object bytes are the JSON the apiserver returns (listed in pages of 500); etcd "
        "figures from its own /metrics; CPU pressure: the share of the last 10 s some task waited for a CPU "
        "(/proc/pressure/cpu).\n" + report(results)
    )
    (Path(args.out) / f"{args.name}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
