"""Argo Workflows beside Kubestep on the same real node, in one window (issue 22; `make bench-argo`).

Run by ``hack/argo/bench.sh`` inside the node's network namespace, after Argo v4.0.5 (built here,
``hack/argo/``) and Kubestep's chart are installed on the node of ``hack/node/``. Both systems get the
same workloads, one after the other, on the same apiserver, etcd, kubelet and containerd:

1. **Sequential steps.** A workflow of N steps of 10 ms work (Argo: a container ``sleep 0.01`` per step,
   a pod each, in the project's Debian image; Kubestep: the ``steps`` example, 10 ms per step), 1 and
   then 20 at once: time per step (the workflow's wall time ÷ N, from the create to the terminal phase
   seen on a watch), steps/s (all steps ÷ from the first create to the last end), and in each window
   API writes (``apiserver_request_total``, mutating verbs, every client: kubelet, controllers, ours),
   etcd WAL and put bytes (etcd's ``/metrics``) per step, with the idle plane's rate beside them.
   Argo's own node times (1 s resolution) say where its time per step goes.
2. **Stopping a running workflow**, ≥ 20 each, one at a time: Argo ``spec.shutdown: Terminate`` and
   ``Stop`` (what ``argo terminate``/``argo stop`` patch) on a workflow whose step is a long sleep and
   that has an exit handler; Kubestep's cancel (``spec.cancelRequested``) of a run stepping every
   10 ms, of one whose 2 s step is in flight (the step finishes, cleanup runs), and of one whose step
   never returns (stopped at its 3 s grace period). Patch → terminal phase seen, and what happened to
   the step in flight and the exit handler / cleanup.
3. **Run timeout.** Argo ``activeDeadlineSeconds`` and Kubestep ``runTimeoutSeconds`` of 10 s on runs
   that would go on for ever: overshoot = terminal phase seen − (create + 10 s), this client's clock
   for both; Kubestep's own ``finishedAt`` − its deadline beside it. Then a workflow that waits 60 s
   between two 1 s steps inside a 30 s budget, on both.

Writes ``results/argo_peer.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stats import summary  # bench/stats.py (the script's folder is on sys.path)
from step_journal import Scraper, delta, etcd_counters, parsed, writes

from kubestep import KubestepClient
from kubestep import _protocol as api
from kubestep._kube import Kube
from kubestep_dev.controlplane import ControlPlane

RESULTS = Path(__file__).resolve().parent / "results"
ARGO = "argoproj.io/v1alpha1"
STEP_IMAGE = "localhost/kubestep-python:3.11-bookworm"
ARGO_TERMINAL = ("Succeeded", "Failed", "Error")


def wf_path(namespace: str, name: str | None = None) -> str:
    path = f"/apis/argoproj.io/v1alpha1/namespaces/{namespace}/workflows"
    return f"{path}/{name}" if name else path


# ---- the workflows --------------------------------------------------------------------------------


def _container(name: str, command: list[str]) -> dict[str, Any]:
    return {"name": name, "container": {"image": STEP_IMAGE, "imagePullPolicy": "Never", "command": command}}


def argo_sequence(tag: str, steps: int, seconds: float = 0.01) -> dict[str, Any]:
    """N sequential steps, each a container running ``sleep`` (a pod per step, as Argo runs steps)."""
    return {
        "apiVersion": ARGO,
        "kind": "Workflow",
        "metadata": {"generateName": "seq-", "labels": {"bench": tag}},
        "spec": {
            "entrypoint": "main",
            "templates": [
                {"name": "main", "steps": [[{"name": f"s{i}", "template": "work"}] for i in range(steps)]},
                _container("work", ["sleep", str(seconds)]),
            ],
        },
    }


def argo_long(tag: str, *, deadline: int | None = None, exit_handler: bool = True) -> dict[str, Any]:
    """One step that sleeps an hour; an exit handler (a 10 ms container) unless told not to."""
    spec: dict[str, Any] = {
        "entrypoint": "main",
        "templates": [
            {"name": "main", "steps": [[{"name": "long", "template": "long"}]]},
            _container("long", ["sleep", "3600"]),
            _container("exit", ["sleep", "0.01"]),
        ],
    }
    if exit_handler:
        spec["onExit"] = "exit"
    if deadline is not None:
        spec["activeDeadlineSeconds"] = deadline
    return {
        "apiVersion": ARGO,
        "kind": "Workflow",
        "metadata": {"generateName": "long-", "labels": {"bench": tag}},
        "spec": spec,
    }


def argo_wait_in_budget(tag: str, wait: int, budget: int) -> dict[str, Any]:
    """A 1 s step, a ``suspend`` of ``wait`` seconds, a 1 s step, inside ``activeDeadlineSeconds``."""
    return {
        "apiVersion": ARGO,
        "kind": "Workflow",
        "metadata": {"generateName": "wait-", "labels": {"bench": tag}},
        "spec": {
            "entrypoint": "main",
            "activeDeadlineSeconds": budget,
            "templates": [
                {
                    "name": "main",
                    "steps": [
                        [{"name": "before", "template": "work"}],
                        [{"name": "pause", "template": "pause"}],
                        [{"name": "after", "template": "work"}],
                    ],
                },
                {"name": "pause", "suspend": {"duration": str(wait)}},
                _container("work", ["sleep", "1"]),
            ],
        },
    }


# ---- following an object to a phase ------------------------------------------------------------------


async def follow(kube: Kube, path: str, name: str, done: Callable[[dict[str, Any]], bool]) -> asyncio.Future[Any]:
    """A watch on one object from a list made now (so nothing after this call is missed); resolves
    with (the object, this machine's wall time) when ``done(obj)`` holds."""
    params = {"fieldSelector": f"metadata.name={name}"}
    listing = await kube.get(path, params)
    loop = asyncio.get_running_loop()
    for obj in listing.get("items") or []:
        if done(obj):
            fut: asyncio.Future[Any] = loop.create_future()
            fut.set_result((obj, time.time()))
            return fut
    rv = listing["metadata"]["resourceVersion"]

    async def watch() -> tuple[dict[str, Any], float]:
        nonlocal rv
        while True:
            async for ev in kube.watch(path, rv, params, timeout_seconds=600):
                obj = ev.get("object") or {}
                rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                if ev.get("type") in ("ADDED", "MODIFIED") and done(obj):
                    return obj, time.time()

    return asyncio.ensure_future(watch())


def argo_ended(obj: dict[str, Any]) -> bool:
    return (obj.get("status") or {}).get("phase") in ARGO_TERMINAL


def wfx_ended(obj: dict[str, Any]) -> bool:
    return (obj.get("status") or {}).get("phase") in api.TERMINAL_PHASES


def argo_step_running(obj: dict[str, Any]) -> bool:
    """The workflow's long step has a pod whose main container runs (Argo marks its node Running)."""
    nodes = ((obj.get("status") or {}).get("nodes") or {}).values()
    return any(
        n.get("type") == "Pod" and n.get("templateName") == "long" and n.get("phase") == "Running" for n in nodes
    )


def wfx_stepping(obj: dict[str, Any]) -> bool:
    return (obj.get("status") or {}).get("phase") == api.Phase.RUNNING


_NODE_NAME = re.compile(r"'[a-z0-9]+(?:-[a-z0-9]+)+'")


def _t(value: str | None) -> float | None:
    parsed_time = api.parse_time(value)
    return parsed_time.timestamp() if parsed_time is not None else None


def argo_breakdown(workflows: list[dict[str, Any]]) -> dict[str, Any]:
    """Where an Argo step's time goes, from its own node records (1 s resolution): a step node's
    lifetime (the pod from creation to its end as the controller saw it) and the gap from one step's
    end to the next one's start (the controller noticing and creating the next pod)."""
    lifetimes, gaps = [], []
    for wf in workflows:
        pods = [n for n in ((wf.get("status") or {}).get("nodes") or {}).values() if n.get("type") == "Pod"]
        spans = sorted((s, f) for s, f in ((_t(n.get("startedAt")), _t(n.get("finishedAt"))) for n in pods) if s and f)
        lifetimes += [(f - s) * 1000 for s, f in spans]
        gaps += [(b[0] - a[1]) * 1000 for a, b in itertools.pairwise(spans)]
    return {
        "pod_node_ms": summary(lifetimes) if lifetimes else None,
        "between_steps_ms": summary(gaps) if gaps else None,
    }


# ---- the measured parts ---------------------------------------------------------------------------


class Bench:
    def __init__(self, plane: ControlPlane, kube: Kube, client: KubestepClient, argo_ns: str) -> None:
        self.plane, self.kube, self.client, self.argo_ns = plane, kube, client, argo_ns
        self.scraper = Scraper(plane)

    async def snapshot(self) -> dict[str, Any]:
        return parsed(await self.scraper.snapshot(None))

    def costs(self, s0: dict[str, Any], s1: dict[str, Any], steps: int, idle: dict[str, float]) -> dict[str, Any]:
        seconds = s1["t"] - s0["t"]
        w = delta(writes(s0["apiserver"]), writes(s1["apiserver"]))
        e = delta(etcd_counters(s0["etcd"]), etcd_counters(s1["etcd"]))
        total = w.get("_total", 0.0)
        by_resource = {k: v for k, v in w.items() if k != "_total" and " " not in k and "/" not in k}
        return {
            "seconds": seconds,
            "steps": steps,
            "writes": total,
            "writes_per_step": total / steps,
            "writes_per_step_less_idle": (total - idle["writes_per_s"] * seconds) / steps,
            "writes_by_resource": dict(sorted(by_resource.items(), key=lambda kv: -kv[1])),
            "etcd_wal_bytes_per_step": e.get("wal_bytes", 0.0) / steps,
            "etcd_put_bytes_per_step": e.get("put_bytes", 0.0) / steps,
            "etcd_put_bytes_per_step_less_idle": (e.get("put_bytes", 0.0) - idle["put_bytes_per_s"] * seconds) / steps,
        }

    async def idle(self, seconds: float) -> dict[str, float]:
        s0 = await self.snapshot()
        await asyncio.sleep(seconds)
        s1 = await self.snapshot()
        dt = s1["t"] - s0["t"]
        w = delta(writes(s0["apiserver"]), writes(s1["apiserver"]))
        e = delta(etcd_counters(s0["etcd"]), etcd_counters(s1["etcd"]))
        return {
            "seconds": dt,
            "writes_per_s": w.get("_total", 0.0) / dt,
            "put_bytes_per_s": e.get("put_bytes", 0.0) / dt,
            "wal_bytes_per_s": e.get("wal_bytes", 0.0) / dt,
        }

    # -- 1. sequential steps

    async def argo_sequence(self, runs: int, steps: int, idle: dict[str, float]) -> dict[str, Any]:
        path = wf_path(self.argo_ns)
        s0 = await self.snapshot()
        created = []
        for _ in range(runs):
            t = time.time()
            obj = await self.kube.create(path, argo_sequence(f"seq{runs}", steps))
            created.append((obj["metadata"]["name"], t))
        futs = [await follow(self.kube, path, name, argo_ended) for name, _ in created]
        ends = await asyncio.wait_for(asyncio.gather(*futs), timeout=120 + 30 * steps * max(1, runs // 4))
        s1 = await self.snapshot()
        return self._sequence(created, ends, steps, s0, s1, idle) | {"argo": argo_breakdown([o for o, _ in ends])}

    async def kubestep_sequence(self, runs: int, steps: int, idle: dict[str, float]) -> dict[str, Any]:
        path = api.execution_path(self.client.namespace)
        s0 = await self.snapshot()
        created = []
        for _ in range(runs):
            t = time.time()
            handle = await self.client.start("steps", {"count": steps, "seconds": 0.01})
            created.append((handle.id, t))
        futs = [await follow(self.kube, path, name, wfx_ended) for name, _ in created]
        ends = await asyncio.wait_for(asyncio.gather(*futs), timeout=300)
        s1 = await self.snapshot()
        return self._sequence(created, ends, steps, s0, s1, idle)

    def _sequence(self, created, ends, steps, s0, s1, idle) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        walls = [(seen - t0) * 1000 for (_, t0), (_, seen) in zip(created, ends, strict=True)]
        phases = Counter((o.get("status") or {}).get("phase") for o, _ in ends)
        first, last = min(t for _, t in created), max(seen for _, seen in ends)
        return {
            "runs": len(created),
            "steps_each": steps,
            "phases": dict(phases),
            "wall_ms": summary(walls),
            "ms_per_step": summary([w / steps for w in walls]),
            "steps_per_s": len(created) * steps / (last - first),
            "costs": self.costs(s0, s1, len(created) * steps, idle),
        }

    # -- 2. stopping a running workflow

    async def argo_stops(self, how: str, count: int, spacing: float = 1.0) -> dict[str, Any]:
        """``count`` workflows whose step is running, then ``spec.shutdown: how`` on each, ``spacing``
        seconds apart (each measured on its own watch: Argo takes tens of seconds per stop, so one at a
        time would take many minutes)."""
        path = wf_path(self.argo_ns)
        names = [(await self.kube.create(path, argo_long(f"stop-{how}")))["metadata"]["name"] for _ in range(count)]
        running = [await follow(self.kube, path, n, argo_step_running) for n in names]
        await asyncio.wait_for(asyncio.gather(*running), timeout=300)

        async def stop(name: str) -> tuple[float, str]:
            done = await follow(self.kube, path, name, argo_ended)
            sent = time.time()
            await self.kube.merge_patch(f"{path}/{name}", {"spec": {"shutdown": how}})
            obj, seen = await asyncio.wait_for(done, 300)
            return (seen - sent) * 1000, self._argo_outcome(obj)

        tasks = []
        for name in names:
            tasks.append(asyncio.ensure_future(stop(name)))
            await asyncio.sleep(spacing)
        results = await asyncio.gather(*tasks)
        return {
            "how": how,
            "spacing_s": spacing,
            "ms": summary([ms for ms, _ in results]),
            "outcomes": dict(Counter(o for _, o in results)),
        }

    @staticmethod
    def _argo_outcome(obj: dict[str, Any]) -> str:
        status = obj.get("status") or {}
        nodes = (status.get("nodes") or {}).values()
        step = next((n for n in nodes if n.get("templateName") == "long" and n.get("type") == "Pod"), {})
        exit_node = next((n for n in nodes if n.get("templateName") == "exit"), None)
        if not (obj.get("spec") or {}).get("onExit"):
            handler = "no exit handler"
        else:
            handler = f"exit handler {exit_node.get('phase')}" if exit_node else "exit handler not run"
        if status.get("message"):
            message = _NODE_NAME.sub("'…'", status["message"])  # one line per outcome, not per workflow
            return f"{status.get('phase')} ({message}); step {step.get('phase')} ({step.get('message', '')}); {handler}"
        return f"{status.get('phase')}; step {step.get('phase')} ({step.get('message', '')}); {handler}"

    async def kubestep_stops(
        self, workflow: str, payload: dict[str, Any], count: int, grace: int | None
    ) -> dict[str, Any]:
        """One run at a time: started, cancelled 0.5 s after a worker began it (inside its step), ended."""
        path = api.execution_path(self.client.namespace)
        out, outcomes = [], []
        for _ in range(count):
            h = await self.client.start(workflow, payload, cancel_grace_period_seconds=grace)
            await asyncio.wait_for(await follow(self.kube, path, h.id, wfx_stepping), timeout=60)
            await asyncio.sleep(0.5)
            done = await follow(self.kube, path, h.id, wfx_ended)
            sent = time.time()
            await self.client.cancel_execution(h.id, reason="bench")
            obj, seen = await asyncio.wait_for(done, 120)
            out.append((seen - sent) * 1000)
            outcomes.append(self._kubestep_outcome(obj))
        return {"workflow": workflow, "grace_s": grace, "ms": summary(out), "outcomes": dict(Counter(outcomes))}

    @staticmethod
    def _kubestep_outcome(obj: dict[str, Any]) -> str:
        status = obj.get("status") or {}
        records = {s.get("key"): s for s in status.get("steps") or []}
        parts = [str(status.get("phase"))]
        for key in ("slow", "hang", "never", "release"):
            rec = records.get(key)
            if rec is None:
                if key != "never":
                    continue
                parts.append("no later step")
                continue
            parts.append(f"step `{key}` {rec.get('state')}")
            stop = (rec.get("output") or {}).get("stop") if isinstance(rec.get("output"), dict) else None
            if isinstance(stop, dict) and "grace_expired" in stop:
                parts.append(f"cleanup saw grace_expired={stop['grace_expired']}")
        return "; ".join(parts)

    # -- 3. run timeouts

    async def argo_deadlines(self, count: int, deadline: int) -> dict[str, Any]:
        path = wf_path(self.argo_ns)
        created = []
        for _ in range(count):
            t = time.time()
            name = (await self.kube.create(path, argo_long("deadline", deadline=deadline, exit_handler=False)))[
                "metadata"
            ]["name"]
            created.append((name, t))
        futs = [await follow(self.kube, path, n, argo_ended) for n, _ in created]
        ends = await asyncio.wait_for(asyncio.gather(*futs), timeout=deadline + 300)
        over = [(seen - t0 - deadline) * 1000 for (_, t0), (_, seen) in zip(created, ends, strict=True)]
        messages = Counter(self._argo_outcome(o) for o, _ in ends)
        return {"deadline_s": deadline, "overshoot_ms": summary(over), "outcomes": dict(messages)}

    async def kubestep_deadlines(self, count: int, deadline: int) -> dict[str, Any]:
        path = api.execution_path(self.client.namespace)
        created = []
        for _ in range(count):
            t = time.time()
            h = await self.client.start("until-cancelled", {"seconds": 0.01}, run_timeout_seconds=deadline)
            created.append((h.id, t))
        futs = [await follow(self.kube, path, n, wfx_ended) for n, _ in created]
        ends = await asyncio.wait_for(asyncio.gather(*futs), timeout=deadline + 120)
        over = [(seen - t0 - deadline) * 1000 for (_, t0), (_, seen) in zip(created, ends, strict=True)]
        own = []  # finishedAt − the deadline (a RunTimeout's cancellation.requestedAt is the deadline itself)
        for obj, _ in ends:
            status = obj.get("status") or {}
            fin, dl = _t(status.get("finishedAt")), _t((status.get("cancellation") or {}).get("requestedAt"))
            if fin is not None and dl is not None:
                own.append((fin - dl) * 1000)
        phases = Counter(
            f"{(o.get('status') or {}).get('phase')}: {((o.get('status') or {}).get('cancellation') or {}).get('reason')}"
            for o, _ in ends
        )
        return {
            "deadline_s": deadline,
            "overshoot_ms": summary(over),
            "own_overshoot_ms": summary(own) if own else None,
            "outcomes": dict(phases),
        }

    async def waits_in_budget(self, wait: int, budget: int) -> dict[str, Any]:
        """The same shape on both at once: 1 s step, a wait of ``wait`` s, 1 s step, budget ``budget`` s."""
        a_path, k_path = wf_path(self.argo_ns), api.execution_path(self.client.namespace)
        t_a = time.time()
        a_name = (await self.kube.create(a_path, argo_wait_in_budget("wait", wait, budget)))["metadata"]["name"]
        t_k = time.time()
        k = await self.client.start(
            "wait-then-finish", {"seconds": 1, "wait_seconds": wait}, run_timeout_seconds=budget
        )
        fa = await follow(self.kube, a_path, a_name, argo_ended)
        fk = await follow(self.kube, k_path, k.id, wfx_ended)
        (a_obj, a_seen), (k_obj, k_seen) = await asyncio.wait_for(asyncio.gather(fa, fk), timeout=wait + budget + 120)
        a_status, k_status = a_obj.get("status") or {}, k_obj.get("status") or {}
        return {
            "wait_s": wait,
            "budget_s": budget,
            "argo": {
                "phase": a_status.get("phase"),
                "message": a_status.get("message"),
                "after_s": a_seen - t_a,
                "steps": {
                    n.get("displayName"): f"{n.get('phase')} ({n.get('message')})"
                    if n.get("message")
                    else n.get("phase")
                    for n in (a_status.get("nodes") or {}).values()
                    if n.get("type") in ("Pod", "Suspend", "Skipped")
                },
            },
            "kubestep": {
                "phase": k_status.get("phase"),
                "after_s": k_seen - t_k,
                "steps": {s.get("key"): s.get("state") for s in k_status.get("steps") or []},
            },
        }


# ---- the report ------------------------------------------------------------------------------------


def _ms(s: dict[str, Any] | None, keys: tuple[str, ...] = ("p50", "p95", "p99")) -> str:
    if not s:
        return "—"
    return " / ".join(f"{s[k]:,.0f}" for k in keys)


def report(r: dict[str, Any]) -> str:
    systems = [(f"Argo, {label}", a) for label, a in r["argo"].items()] + [("Kubestep", r["kubestep"])]
    lines = [
        f"# Argo Workflows v4.0.5 beside Kubestep, one node, one window ({r['machine']['date']})",
        "",
        "`bench/argo_peer.py` via `make bench-argo` (hack/argo/bench.sh): the real node of hack/node (kubelet, "
        "containerd, the local control plane on the same 2 cores), Argo's namespaced install (its controller "
        "only, images built here) and Kubestep's chart (operator, one worker pod, the default batch step store) "
        "on it at once. Argo twice: as installed (`DEFAULT_REQUEUE_TIME` 10 s, its default) and tuned to 1 s "
        f"(`kubectl set env`). Idle plane before: {r['idle']['writes_per_s']:.1f} writes/s, "
        f"{r['idle']['put_bytes_per_s']:,.0f} etcd put B/s.",
        "",
        f"## 1. A workflow of {r['steps']} sequential steps of 10 ms",
        "",
        "| system | workflows at once | time per step p50 / p95 / p99 ms | workflow p50 s | steps/s | "
        "API writes/step (less idle) | etcd put B/step (less idle) | etcd WAL B/step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, sysr in systems:
        for runs, seq in sorted(sysr["sequence"].items(), key=lambda kv: int(kv[0])):
            c = seq["costs"]
            lines.append(
                f"| {label} | {runs} | {_ms(seq['ms_per_step'])} | {seq['wall_ms']['p50'] / 1000:,.2f} | "
                f"{seq['steps_per_s']:,.2f} | {c['writes_per_step']:.1f} ({c['writes_per_step_less_idle']:.1f}) | "
                f"{c['etcd_put_bytes_per_step']:,.0f} ({c['etcd_put_bytes_per_step_less_idle']:,.0f}) | "
                f"{c['etcd_wal_bytes_per_step']:,.0f} |"
            )
    lines += [""]
    for label, sysr in systems:
        for runs, seq in sorted(sysr["sequence"].items(), key=lambda kv: int(kv[0])):
            b = seq.get("argo")
            where = (
                f"a step's pod node lasts p50 {_ms(b['pod_node_ms'], ('p50',))} ms (max {_ms(b['pod_node_ms'], ('max',))}) "
                f"and the next starts p50 {_ms(b['between_steps_ms'], ('p50',))} ms (max "
                f"{_ms(b['between_steps_ms'], ('max',))}) after one ends (its own node times, 1 s resolution); "
                if b
                else ""
            )
            lines.append(
                f"* {label}, {runs} at once: {where}writes by resource: {_top(seq['costs']['writes_by_resource'])}; "
                f"phases {seq['phases']}."
            )
    lines += [
        "",
        "## 2. Stopping a running workflow (patch sent → terminal phase seen on a watch)",
        "",
        "Argo: 20 workflows whose one step sleeps an hour, each with an exit handler (a 10 ms container), "
        "stopped 1 s apart, each on its own watch. Kubestep: one run at a time, cancelled 0.5 s after a "
        "worker began it.",
        "",
        "| system, how | n | p50 / p95 / p99 ms | max ms | the step in flight, the exit handler / cleanup |",
        "|---|---:|---:|---:|---|",
    ]
    for label, sysr in systems:
        for st in sysr["stops"]:
            lines.append(
                f"| {label}: {st['label']} | {st['ms']['n']} | {_ms(st['ms'])} | {st['ms']['max']:,.0f} | "
                + "<br>".join(f"{n}× {o}" for o, n in st["outcomes"].items())
                + " |"
            )
    lines += [
        "",
        "## 3. Run timeout",
        "",
        "| system | budget | n | overshoot p50 / p95 / p99 ms (terminal seen − create − budget, this client) "
        "| its own view | outcome |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for label, sysr in systems:
        d = sysr["deadlines"]
        own = (
            _ms(d.get("own_overshoot_ms")) + " (finishedAt − deadline)"
            if d.get("own_overshoot_ms")
            else "1 s timestamps"
        )
        lines.append(
            f"| {label} | {d['deadline_s']} s | {d['overshoot_ms']['n']} | {_ms(d['overshoot_ms'])} | {own} | "
            + "<br>".join(f"{n}× {o}" for o, n in d["outcomes"].items())
            + " |"
        )
    w = r["wait_in_budget"]
    lines += [
        "",
        f"**A workflow that waits {w['wait_s']} s between two 1 s steps, inside a {w['budget_s']} s budget, "
        "on both at once** (Argo as installed):",
        "",
        f"* Argo: **{w['argo']['phase']}** after {w['argo']['after_s']:.1f} s (“{w['argo']['message']}”); "
        f"nodes: {w['argo']['steps']}. `activeDeadlineSeconds` is wall-clock time from the start, waits included.",
        f"* Kubestep: **{w['kubestep']['phase']}** after {w['kubestep']['after_s']:.1f} s; steps: "
        f"{w['kubestep']['steps']}. `runTimeoutSeconds` counts only the time a worker runs the workflow, "
        "and each wait starts it afresh.",
        "",
    ]
    return "\n".join(lines)


def _top(d: dict[str, float], n: int = 6) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in list(d.items())[:n])


async def argo_configure(kube: Kube, namespace: str, requeue: str | None) -> None:
    """The controller with ``DEFAULT_REQUEUE_TIME`` set (or removed: its default, 10 s), rolled out, and
    then leading: a one-step workflow has succeeded."""
    env: dict[str, Any] = (
        {"name": "DEFAULT_REQUEUE_TIME", "value": requeue}
        if requeue
        else {"name": "DEFAULT_REQUEUE_TIME", "$patch": "delete"}
    )
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/workflow-controller"
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "workflow-controller", "env": [env]}]}}}}
    await kube.request("PATCH", path, json_body=patch, content_type="application/strategic-merge-patch+json")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        d = await kube.get(path)
        st, want = d.get("status") or {}, d["spec"].get("replicas", 1)
        if (
            st.get("observedGeneration", 0) >= d["metadata"]["generation"]
            and st.get("updatedReplicas") == want
            and st.get("readyReplicas") == want
            and st.get("replicas") == want
        ):
            break
        await asyncio.sleep(1)
    else:
        raise RuntimeError("the Argo controller did not roll out in 180 s")
    wf_p = wf_path(namespace)
    name = (await kube.create(wf_p, argo_sequence("ready", 1)))["metadata"]["name"]
    obj, _ = await asyncio.wait_for(await follow(kube, wf_p, name, argo_ended), 180)
    if (obj.get("status") or {}).get("phase") != "Succeeded":
        raise RuntimeError(f"the Argo controller's first workflow: {obj.get('status')}")


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    plane = ControlPlane(args.plane_dir, progress=None)
    async with KubestepClient(namespace=args.kubestep_namespace, kubeconfig=str(plane.kubeconfig)) as client:
        kube = client._kube
        bench = Bench(plane, kube, client, args.argo_namespace)
        out: dict[str, Any] = {"steps": args.steps, "machine": _machine(), "argo": {}}
        out["idle"] = await bench.idle(args.idle_seconds)
        say(f"idle: {out['idle']}")

        k: dict[str, Any] = {"sequence": {}, "stops": []}
        for runs in args.concurrency:
            k["sequence"][str(runs)] = await bench.kubestep_sequence(runs, args.steps, out["idle"])
            say(f"kubestep {runs}: {k['sequence'][str(runs)]['ms_per_step']}")
        for label, wf, payload, grace in (
            ("cancel, 10 ms steps", "until-cancelled", {"seconds": 0.01}, None),
            ("cancel, a 2 s step in flight (grace 30 s)", "slow-step-cleanup", {"seconds": 2}, 30),
            ("cancel, a step that never returns (grace 3 s)", "hang", {"kind": "async"}, 3),
        ):
            st = await bench.kubestep_stops(wf, payload, args.stops, grace)
            k["stops"].append({"label": label, **st})
            say(f"kubestep {label}: {st['ms']}")
        k["deadlines"] = await bench.kubestep_deadlines(args.stops, args.deadline)
        say(f"kubestep deadlines: {k['deadlines']['overshoot_ms']}")
        out["kubestep"] = k

        for label, requeue in (("as installed", None), ("DEFAULT_REQUEUE_TIME=1s", "1s")):
            await argo_configure(kube, args.argo_namespace, requeue)
            a: dict[str, Any] = {"requeue": requeue or "10s (default)", "sequence": {}, "stops": []}
            for runs in args.concurrency:
                a["sequence"][str(runs)] = await bench.argo_sequence(runs, args.steps, out["idle"])
                say(f"argo {label} {runs}: {a['sequence'][str(runs)]['ms_per_step']}")
            for how in ("Terminate", "Stop"):
                st = await bench.argo_stops(how, args.stops)
                a["stops"].append({"label": f"`spec.shutdown: {how}`", **st})
                say(f"argo {label} {how}: {st['ms']}")
            a["deadlines"] = await bench.argo_deadlines(args.stops, args.deadline)
            say(f"argo {label} deadlines: {a['deadlines']['overshoot_ms']}")
            out["argo"][label] = a
            if requeue is None:
                out["wait_in_budget"] = await bench.waits_in_budget(args.wait, args.budget)
                say(f"wait in budget: {out['wait_in_budget']}")
        await bench.scraper.aclose()
        return out


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def say(msg: str) -> None:
    print(f"[argo-peer {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plane-dir", type=Path, default=Path.home() / ".cache/kubestep/node/plane")
    ap.add_argument("--argo-namespace", default="argo")
    ap.add_argument("--kubestep-namespace", default="kubestep")
    ap.add_argument("--steps", type=int, default=10, help="steps per workflow (section 1)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 20])
    ap.add_argument("--stops", type=int, default=20, help="stops of each kind, and runs with a deadline")
    ap.add_argument("--deadline", type=int, default=10)
    ap.add_argument("--wait", type=int, default=60)
    ap.add_argument("--budget", type=int, default=30)
    ap.add_argument("--idle-seconds", type=float, default=20)
    ap.add_argument("--out", type=Path, default=RESULTS / "argo_peer")
    args = ap.parse_args()
    results = asyncio.run(amain(args))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    args.out.with_suffix(".md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
