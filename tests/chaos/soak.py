"""The chaos soak: runs under injected faults, with every promise checked from outside.

``python -m tests.chaos.soak`` (``make chaos``: 500 runs) on a control plane of its own; the default
suite runs a short version (``tests/test_chaos.py``). It starts runs of five shapes (sequential steps,
steps with waits, concurrent steps, a step that raises, blocking steps), cancels a random third at
random moments and gives a random fifth a short ``runTimeoutSeconds``, while it kills with SIGKILL and
restarts workers every few seconds, the operator repeatedly, the apiserver and etcd. Then it lets the
system settle and checks each run against the steps' own log (``workflows.py``) and prints a table.

The promises (issue 10), as checked here:

* terminal: every run ends Completed, Failed or Cancelled within ``settle_timeout`` of the last fault;
* no lost cancel: a cancel the API accepted (``cancel_execution`` returned True) ends the run Cancelled;
* nothing starts after a stop: no step starts more than ``STOP_SLACK`` after the cancel was accepted
  (the step in flight finishes; a step whose predecessor's record was answered just before the cancel
  may start within the slack), nor after a run timeout's deadline (``cancellation.requestedAt``);
* exactly once: a step recorded Completed was started by at most one worker that was never killed, and
  by no worker twice (the exception: the step in flight on a killed worker);
* results: a Completed run's result is the outputs its steps returned (each seen in the log's end line
  of that step), in order; only the raising shape fails, with its own error;
* retries: a retried step is started at most ``FLAKY_ATTEMPTS`` times by workers never killed, and no
  attempt starts after a stop (the rule above: its attempts log under the run);
* the tree: every child run is checked as a run (exactly once, results, terminal), and no child of a
  root that ended Cancelled completed more than ``CASCADE_SLACK`` after the root's stop.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import datetime as dt
import json
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kubestep import KubestepClient
from kubestep import _protocol as api
from kubestep._errors import ApiError, NotFoundError, TransportError
from kubestep_dev import local
from kubestep_dev.controlplane import APISERVER, ETCD, ControlPlane
from kubestep_dev.locations import cache_dir
from kubestep_dev.ports import Ports
from kubestep_dev.postgres import LocalPostgres

from .workflows import FLAKY_ATTEMPTS

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ["seq", "waits", "concurrent", "raises", "sync", "retries", "tree"]
STOP_SLACK = 1.0
# How long after its root stopped a child run may still complete: the cascade is the operator's, and the
# soak kills the operator (a restart, and a lease before it sees the workers again) and the apiserver.
CASCADE_SLACK = 20.0


@dataclasses.dataclass
class Config:
    runs: int = 500
    workers: int = 2
    concurrency: int = 10
    fault_seconds: float = 120.0  # how long faults are injected
    worker_kill_every: float = 4.0
    operator_kills: int = 3
    apiserver_kills: int = 2
    etcd_kills: int = 1
    lease_seconds: int = 5
    settle_timeout: float = 240.0
    steps: int = 6
    step_seconds: float = 0.3
    timeout_seconds: int = 2  # the short runTimeoutSeconds a fifth of the runs get
    seed: int = 0
    # The workers' step store (KUBESTEP_STEP_STORE). With ``postgres`` a local server of the soak's
    # own (kubestep_dev.postgres) holds the records, and is itself stopped ``postgres_outages`` times
    # for ``postgres_down_seconds`` (a fast shutdown: connections cut, as in a failover).
    store: str = "batch"
    postgres_outages: int = 2
    postgres_down_seconds: float = 5.0


@dataclasses.dataclass
class Report:
    faults: collections.Counter[str]
    phases: collections.Counter[str]
    violations: dict[str, list[str]]
    settle_seconds: float | None
    runs: int
    steps_started: int

    def ok(self) -> bool:
        return self.settle_seconds is not None and not any(self.violations.values())

    def table(self) -> str:
        lines = ["| faults injected (and cancels) | count |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(self.faults.items())]
        lines += ["", "| runs by final phase | count |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(self.phases.items())]
        lines += ["", "| invariant | violations |", "|---|---:|"]
        lines += [f"| {k} | {len(v)} |" for k, v in self.violations.items()]
        settled = "never" if self.settle_seconds is None else f"{self.settle_seconds:.1f} s"
        lines += [
            "",
            f"{self.runs} runs, {self.steps_started} step starts logged; settled {settled} after the last fault",
        ]
        for k, v in self.violations.items():
            lines += [f"- {k}: {x}" for x in v[:5]]
        return "\n".join(lines)


INVARIANTS = [
    "terminal",
    "lost cancel",
    "step after stop",
    "ran twice",
    "wrong result",
    "unexpected failure",
    "attempts beyond the policy",
    "child outlived its root",
]


class Soak:
    def __init__(self, cfg: Config, plane: ControlPlane, work: Path) -> None:
        self.cfg, self.plane, self.work = cfg, plane, work
        self.rng = random.Random(cfg.seed)
        self.ns = f"chaos-{uuid.uuid4().hex[:6]}"
        self.log = work / "steps.log"
        self.log.touch()
        self.faults: collections.Counter[str] = collections.Counter()
        self.workers: list[local.Proc] = []
        self.killed_pids: set[int] = set()
        self.operator: local.Proc | None = None
        self.cancels: dict[str, float] = {}  # run → when the API accepted its cancel (time.time())
        self.spec: dict[str, dict[str, Any]] = {}
        self.postgres: LocalPostgres | None = None

    # ----- processes ----------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env = {"KUBESTEP_CHAOS_LOG": str(self.log), "PYTHONPATH": path, "KUBESTEP_CANCEL_GRACE_SECONDS": "10"}
        env["KUBESTEP_STEP_STORE"] = self.cfg.store
        if self.postgres is not None:
            env["KUBESTEP_POSTGRES_DSN"] = self.postgres.dsn
        return env

    def start_worker(self) -> None:
        self.workers.append(
            local.start_worker(
                self.plane.kubeconfig,
                self.work,
                self.ns,
                module="tests.chaos.workflows",
                concurrency=self.cfg.concurrency,
                lease_seconds=self.cfg.lease_seconds,
                env=self._env(),
            )
        )

    def start_operator(self) -> None:
        self.operator = local.start_operator(
            self.plane.kubeconfig, self.work, [self.ns], lease_seconds=self.cfg.lease_seconds, env=self._env()
        )

    def kill_worker(self) -> None:
        alive = [w for w in self.workers if w.alive()]
        if alive:
            victim = self.rng.choice(alive)
            self.killed_pids.add(victim.pid)
            victim.signal(signal.SIGKILL)
            victim.popen.wait()
            self.faults["worker SIGKILL"] += 1
        self.start_worker()  # a new pod name, as a Deployment would

    async def kill_operator(self) -> None:
        assert self.operator is not None
        self.operator.signal(signal.SIGKILL)
        self.operator.popen.wait()
        self.faults["operator SIGKILL"] += 1
        await asyncio.sleep(1.0)
        self.start_operator()

    async def kill_component(self, component: str, label: str) -> None:
        pid = self.plane._running_pid(component)
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        self.faults[label] += 1
        await asyncio.sleep(1.0)
        await asyncio.to_thread(self.plane.up)  # restarts what is missing, on the same data

    async def postgres_outage(self) -> None:
        assert self.postgres is not None
        await asyncio.to_thread(self.postgres.stop)
        self.faults["postgres down"] += 1
        await asyncio.sleep(self.cfg.postgres_down_seconds)
        await asyncio.to_thread(self.postgres.start)

    def stop_all(self) -> None:
        for p in [*self.workers, *([self.operator] if self.operator else [])]:
            if p.alive():
                p.signal(signal.SIGKILL)
                p.stop(timeout=5)

    # ----- the client side, tolerant of outages ------------------------------------------------

    async def _retry(self, what: Any) -> Any:
        for attempt in range(200):
            try:
                return await what()
            except (TransportError, ApiError) as e:
                if isinstance(e, ApiError) and not isinstance(e, NotFoundError) and e.status_code < 500:
                    if e.status_code != 429:
                        raise
                await asyncio.sleep(min(2.0, 0.1 * (attempt + 1)))
        raise RuntimeError("the apiserver never came back")

    async def create_runs(self, client: KubestepClient, until: float) -> None:
        """Spread over the first 85% of the fault window, so that faults land on runs at every stage;
        a random third get a cancel at a random moment of their life."""
        gap = 0.85 * max(0.0, until - time.monotonic()) / max(1, self.cfg.runs)
        cancels = []
        for i in range(self.cfg.runs):
            name = f"r{i:04d}"
            shape = SHAPES[i % len(SHAPES)]
            kw: dict[str, Any] = {}
            if self.rng.random() < 0.2:
                kw["run_timeout_seconds"] = self.cfg.timeout_seconds
            self.spec[name] = {"shape": shape, **kw}
            payload = {"shape": shape, "steps": self.cfg.steps, "seconds": self.cfg.step_seconds}

            async def create(name: str = name, payload: dict[str, Any] = payload, kw: dict[str, Any] = kw) -> None:
                try:
                    await client.start("chaos", payload, name=name, **kw)
                except ApiError as e:
                    if e.status_code != 409:  # created already, its answer lost in an outage
                        raise

            await self._retry(create)
            if self.rng.random() < 1 / 3:
                life = self.cfg.steps * self.cfg.step_seconds * 2
                cancels.append(asyncio.create_task(self.cancel_later(client, name, self.rng.uniform(0, life))))
            await asyncio.sleep(gap)
        await asyncio.gather(*cancels)

    async def cancel_later(self, client: KubestepClient, name: str, delay: float) -> None:
        await asyncio.sleep(delay)
        accepted = await self._retry(lambda: client.cancel_execution(name, reason="chaos"))
        if accepted:
            self.cancels[name] = time.time()
        self.faults["cancel (accepted)" if accepted else "cancel (run already finished)"] += 1

    async def faults_loop(self, until: float) -> None:
        span = until - time.monotonic()
        plan: list[tuple[float, str]] = []
        t = self.cfg.worker_kill_every
        while t < span:
            plan.append((t, "worker"))
            t += self.cfg.worker_kill_every
        plan += [(span * (i + 1) / (self.cfg.operator_kills + 1), "operator") for i in range(self.cfg.operator_kills)]
        plan += [
            (span * (i + 0.5) / max(1, self.cfg.apiserver_kills), "apiserver") for i in range(self.cfg.apiserver_kills)
        ]
        plan += [(span * 0.7, "etcd") for _ in range(self.cfg.etcd_kills)]
        if self.postgres is not None:
            n = self.cfg.postgres_outages
            plan += [(span * (i + 0.3) / max(1, n), "postgres") for i in range(n)]
        start = time.monotonic()
        for at, kind in sorted(plan):
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            if kind == "worker":
                self.kill_worker()
            elif kind == "operator":
                await self.kill_operator()
            elif kind == "postgres":
                await self.postgres_outage()
            elif kind == "apiserver":
                await self.kill_component(APISERVER, "apiserver SIGKILL")
            else:
                await self.kill_component(ETCD, "etcd SIGKILL")

    # ----- the soak --------------------------------------------------------------------------

    async def run(self) -> Report:
        self.plane.kubectl("create", "namespace", self.ns)
        if self.cfg.store == "postgres":
            # Its own directory, not one under the soak's: the server runs as the ``postgres`` user when
            # the soak runs as root, and the soak's mkdtemp directory (0700, root) would shut it out.
            self.postgres = LocalPostgres()
            await asyncio.to_thread(self.postgres.start)
        self.start_operator()
        for _ in range(self.cfg.workers):
            self.start_worker()
        try:
            # With Postgres the check reads the runs' histories from it, as a user's client would.
            dsn = self.postgres.dsn if self.postgres is not None else None
            async with KubestepClient(
                namespace=self.ns, kubeconfig=str(self.plane.kubeconfig), postgres_dsn=dsn
            ) as client:
                until = time.monotonic() + self.cfg.fault_seconds
                await asyncio.gather(self.faults_loop(until), self.create_runs(client, until))
                last_fault = time.monotonic()
                settled = await self.settle(client, last_fault)
                return await self.check(client, settled)
        finally:
            self.stop_all()
            if self.postgres is not None:
                self.postgres.destroy()

    async def settle(self, client: KubestepClient, since: float) -> float | None:
        while time.monotonic() - since < self.cfg.settle_timeout:
            items = await self._retry(lambda: client._kube.get(api.execution_path(self.ns)))
            if all((o.get("status") or {}).get("phase") in api.TERMINAL_PHASES for o in items["items"]):
                return time.monotonic() - since
            await asyncio.sleep(1.0)
        return None

    async def check(self, client: KubestepClient, settled: float | None) -> Report:
        starts: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)
        ends: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
        total = 0
        for line in self.log.read_text().splitlines():
            rec = json.loads(line)
            if rec["ev"] == "start":
                starts[(rec["run"], rec["key"])].append(rec)
                total += 1
            else:
                ends[(rec["run"], rec["key"])].add(rec["out"])
        v: dict[str, list[str]] = {k: [] for k in INVARIANTS}
        phases: collections.Counter[str] = collections.Counter()
        # The tree shape's children are runs too: checked as seq runs, and against their root's stop.
        children: dict[str, str] = {}
        for root in [n for n, sp in self.spec.items() if sp["shape"] == "tree"]:
            for c in await self._retry(lambda root=root: client.children(root)):
                children[c.id] = root
                self.spec.setdefault(c.id, {"shape": "seq"})
        for name, spec in sorted(self.spec.items()):
            e = await self._retry(lambda name=name: client.get_execution(name))
            st = e.status
            phases[f"{st.phase} ({st.reason})"] += 1
            if st.phase not in api.TERMINAL_PHASES:
                v["terminal"].append(f"{name} is {st.phase}")
                continue
            run_starts = [r for (run, _), rs in starts.items() if run == name for r in rs]
            if name in self.cancels and st.phase != "Cancelled":
                accepted = dt.datetime.fromtimestamp(self.cancels[name], dt.UTC).isoformat(timespec="milliseconds")
                v["lost cancel"].append(
                    f"{name}: cancel accepted at {accepted}, ended {st.phase}/{st.reason} at {st.finished_at} "
                    f"(spec.cancelRequested {e.cancel_requested}, worker {st.worker}, attempt {st.attempt}, "
                    f"started {st.started_at})"
                )
            stop_at = self.cancels.get(name)
            if (
                st.cancellation
                and st.cancellation.reason == api.StopReason.RUN_TIMEOUT
                and st.cancellation.requested_at
            ):
                deadline = st.cancellation.requested_at.timestamp()
                stop_at = deadline if stop_at is None else min(stop_at, deadline)
            if stop_at is not None:
                late = [r for r in run_starts if r["t"] > stop_at + STOP_SLACK]
                if late:
                    v["step after stop"].append(f"{name}: {[r['key'] for r in late]} started after its stop")
            history = await self._retry(lambda name=name: client.step_history(name))
            outputs = {}
            for rec in history:
                if rec.kind != "Run" or rec.state != "Completed" or rec.key == "children":
                    continue  # (the tree's invoke step starts children: it logs nothing itself)
                outputs[rec.key] = rec.output
                by_pid = collections.Counter(r["pid"] for r in starts[(name, rec.key)])
                alive = [pid for pid in by_pid if pid not in self.killed_pids]
                if any(n > 1 for n in by_pid.values()) or len(alive) > 1 or not by_pid:
                    v["ran twice"].append(f"{name}/{rec.key}: started by {dict(by_pid)}")
                if rec.output not in ends[(name, rec.key)]:
                    v["wrong result"].append(f"{name}/{rec.key}: recorded {rec.output!r}, never returned by the step")
            if st.phase == "Completed":
                expected = [outputs.get(f"s{i}") for i in range(self.cfg.steps)]
                if e.status.result != expected:
                    v["wrong result"].append(f"{name}: result {e.status.result} != step outputs {expected}")
            if st.phase == "Failed" and not (spec["shape"] == "raises" and st.reason == "WorkflowError"):
                v["unexpected failure"].append(f"{name} ({spec['shape']}): {st.reason}: {st.message}")
            if spec["shape"] == "raises" and st.phase == "Completed":
                v["wrong result"].append(f"{name}: the raising shape completed")
            if spec["shape"] == "retries":
                flaky = collections.Counter(r["pid"] for r in starts[(name, "flaky")])
                attempts = sum(k for pid, k in flaky.items() if pid not in self.killed_pids)
                if attempts > FLAKY_ATTEMPTS:
                    v["attempts beyond the policy"].append(f"{name}: flaky started {dict(flaky)}")
            parent = children.get(name)
            if parent is not None and st.phase == "Completed" and st.finished_at is not None:
                r = await self._retry(lambda parent=parent: client.get_execution(parent))
                stop = r.status.cancellation.requested_at if r.status.cancellation else None
                if r.status.phase == "Cancelled" and stop is not None:
                    late = (st.finished_at - stop).total_seconds()
                    if late > CASCADE_SLACK:
                        v["child outlived its root"].append(
                            f"{name}: completed {late:.1f} s after root {parent} stopped"
                        )
        return Report(self.faults, phases, v, settled, len(self.spec), total)


async def soak(cfg: Config, plane: ControlPlane | None = None, work: Path | None = None) -> Report:
    """The soak on ``plane`` (a control plane of its own when None: it is killed and restarted)."""
    work = work or Path(tempfile.mkdtemp(prefix="kubestep-chaos-"))
    own = plane is None
    if plane is None:
        root = cache_dir()
        root.mkdir(parents=True, exist_ok=True)
        plane = ControlPlane(Path(tempfile.mkdtemp(prefix="chaos-", dir=root)), ports=Ports.free())
        await asyncio.to_thread(plane.up)
    try:
        return await Soak(cfg, plane, work).run()
    finally:
        if own:
            plane.down(purge=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(Config):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    p.add_argument("--out", type=Path, help="also write the table here (markdown)")
    args = p.parse_args(argv)
    cfg = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
    started = time.monotonic()
    report = asyncio.run(soak(cfg))
    text = f"{report.table()}\n\n(whole soak: {time.monotonic() - started:.0f} s; {cfg})"
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
