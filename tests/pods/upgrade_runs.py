"""The runs of the rolling-upgrade stage (hack/node/upgrade.sh), and what they must show afterwards.

    python -m tests.pods.upgrade_runs start NAMESPACE STATE      # runs that execute, wait, await an event
    python -m tests.pods.upgrade_runs progressed NAMESPACE STATE # until each recorded steps (old workers)
    python -m tests.pods.upgrade_runs preflight NAMESPACE STATE  # a new worker refuses the old CRDs
    python -m tests.pods.upgrade_runs events NAMESPACE STATE     # the events the event runs wait for
    python -m tests.pods.upgrade_runs check NAMESPACE STATE

The runs are of ``myflows-upgrade`` (tests/pods/userimage/myflows): each execution of a step posts a
``StepExecuted`` Event with a fresh token before the step returns, so what ran is known apart from what
Kubestep recorded. ``check`` waits for every run to complete and asserts, from that evidence:

* every run Completed, with every step recorded once;
* no step executed twice: one token per (run, step) among the Events, and it is the recorded one;
* some runs were recorded by an old worker and resumed by a new one (steps of both in one run; each
  step's output says whether its worker's Kubestep has the step journal).

It prints the figures for bench/results/node-e2e.md on stdout; it exits non-zero on a violation.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

from kubestep import KubestepClient

WORKFLOW = "myflows-upgrade"
# Long enough to span the rollout on a busy 2-core machine, short enough to keep the stage small.
PLANS: dict[str, tuple[int, dict[str, Any]]] = {
    # kind: (how many, input)
    "execute": (6, {"count": 300, "seconds": 0.4}),
    "wait": (6, {"count": 14, "seconds": 0.2, "waits": [1, 3, 5, 7, 9, 11], "wait_seconds": 12}),
    "event": (3, {"count": 4, "seconds": 0.2, "event_after": 1}),
}


def _say(*parts: Any) -> None:
    print(f"[upgrade {time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


async def start(client: KubestepClient) -> dict[str, str]:
    runs: dict[str, str] = {}
    for kind, (n, payload) in PLANS.items():
        for i in range(n):
            h = await client.start(WORKFLOW, payload, name=f"up-{kind}-{i}", labels={"kubestep.io/upgrade": kind})
            runs[h.id] = kind
    _say(f"started {len(runs)} runs: " + ", ".join(f"{n} {k}" for k, (n, _) in PLANS.items()))
    return runs


async def progressed(client: KubestepClient, runs: dict[str, str], timeout: float = 240) -> None:
    """Until every run has recorded steps (old workers only so far): an executing run 3, a waiting
    run its first wait, an event run its wait for the event."""
    end = time.monotonic() + timeout
    while True:
        behind = []
        for name, kind in runs.items():
            e = await client.get_execution(name)
            done = e.status.steps_completed
            if (kind == "execute" and done < 3) or (kind != "execute" and done < 2):
                behind.append(f"{name}:{e.status.phase}:{done}")
        if not behind:
            _say("every run has recorded steps on the old workers")
            return
        if time.monotonic() > end:
            raise SystemExit(f"runs made no progress on the old workers: {behind}")
        await asyncio.sleep(1)


async def events(client: KubestepClient, runs: dict[str, str]) -> None:
    for name, kind in runs.items():
        if kind == "event":
            await client.send_event(name, "go", {"sent": "after the upgrade"}, name="go-after-upgrade")
    _say("sent the events")


def _events(namespace: str, reason: str) -> list[dict[str, Any]]:
    kubectl = os.environ.get("KUBECTL", "kubectl")
    out = subprocess.run(
        [kubectl, "-n", namespace, "get", "events", "--field-selector", f"reason={reason}", "-o", "json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return list(json.loads(out)["items"])


def _lost(namespace: str) -> set[tuple[str, str]]:
    """(run, worker) for each time the operator declared a run's holder lost (its Lease expired)."""
    found = set()
    for item in _events(namespace, "WorkerLost"):
        m = re.search(r"worker '([^']+)'", item.get("message") or "")
        if m:
            found.add((item["involvedObject"]["name"], m.group(1)))
    return found


def _evidence(namespace: str) -> dict[tuple[str, str], dict[str, str]]:
    """(run, step) → {token: pod} of every execution, from the StepExecuted Events."""
    found: dict[tuple[str, str], dict[str, str]] = collections.defaultdict(dict)
    for item in _events(namespace, "StepExecuted"):
        m = json.loads(item["message"])
        found[(m["run"], m["key"])][m["token"]] = m["pod"]  # a retried POST: the same token twice
    return found


async def check(client: KubestepClient, namespace: str, runs: dict[str, str]) -> int:
    violations: list[str] = []
    phases: collections.Counter[str] = collections.Counter()
    histories: dict[str, list[Any]] = {}
    for name in runs:
        try:
            e = await client.wait(name, timeout=300)
        except Exception as exc:  # a violation, reported with the run's state
            e = await client.get_execution(name)
            violations.append(f"{name} did not finish: {e.status.phase} {e.status.message} ({exc!r})")
        phases[str(e.status.phase)] += 1
        if e.status.phase != "Completed":
            violations.append(f"{name} ended {e.status.phase}: {e.status.message} {e.status.error}")
        histories[name] = await client.step_history(name)
    executed = _evidence(namespace)
    lost = _lost(namespace)
    # A holder declared lost (its Lease expired) may have finished its step in flight without recording
    # it: that one step runs again, by design (at least once for a step in flight). Once per loss.
    again_after_loss: collections.Counter[tuple[str, str]] = collections.Counter()
    resumed_by_new = 0
    steps_total = 0
    for name, kind in runs.items():
        n = int(PLANS[kind][1]["count"])
        recorded = {s.key: s for s in histories[name] if s.kind == "Run" and s.state == "Completed"}
        expected = {f"step-{i}" for i in range(n)}
        if set(recorded) != expected:
            violations.append(f"{name}: recorded steps {sorted(set(recorded) ^ expected)} missing or extra")
        releases = []
        for key in sorted(expected, key=lambda k: int(k.split("-")[1])):
            steps_total += 1
            tokens = executed.get((name, key), {})
            record = recorded.get(key)
            kept = (record.output or {}).get("token") if record is not None else None
            unrecorded = [pod for token, pod in tokens.items() if token != kept]
            excused = [pod for pod in unrecorded if (name, pod) in lost and again_after_loss[(name, pod)] == 0]
            for pod in excused:
                again_after_loss[(name, pod)] += 1
            if not tokens or len(unrecorded) > len(excused):
                violations.append(f"{name}/{key} executed {len(tokens)} times: {tokens}")
            if record is not None and kept not in tokens:
                violations.append(f"{name}/{key}: the recorded token is not one that ran: {record.output}")
            if record is not None:
                releases.append("new" if (record.output or {}).get("journal") else "old")
        kinds = releases
        if "old" in kinds and "new" in kinds and kinds.index("new") > kinds.index("old"):
            resumed_by_new += 1
    executions = sum(len(t) for t in executed.values())
    print(f"runs: {len(runs)} ({', '.join(f'{n} {k}' for k, (n, _) in PLANS.items())}); phases: {dict(phases)}")
    print(f"steps recorded: {steps_total}; step executions (StepExecuted Events, distinct tokens): {executions}")
    print(f"runs with steps of an old worker, then of a new one: {resumed_by_new}")
    print(
        f"holders declared lost (Lease expired): {len(lost)}; their step in flight ran again: "
        f"{sum(again_after_loss.values())} (at least once, by design)"
    )
    by_release = collections.Counter(k for name in runs for k in _releases(histories[name]))
    print(f"steps recorded by old workers: {by_release['old']}, by new workers: {by_release['new']}")
    print(f"violations: {len(violations)}")
    for v in violations[:30]:
        print(f"  {v}")
    if resumed_by_new == 0:
        print("  no run was resumed by a new worker after an old one recorded steps: the stage proved nothing")
        return 1
    return 1 if violations else 0


def _releases(history: list[Any]) -> list[str]:
    return ["new" if (s.output or {}).get("journal") else "old" for s in history if s.kind == "Run"]


async def preflight() -> int:
    """What a new worker says against the old CRDs (its preflight, on the apiserver's discovery and
    OpenAPI): it must refuse to start and say what to apply."""
    from kubestep._kube import Kube
    from kubestep._worker.preflight import OutdatedCRDs, check

    async with Kube(os.environ.get("KUBECONFIG")) as kube:
        try:
            await check(kube)
        except OutdatedCRDs as e:
            if "StepBatch" not in str(e) or "kubectl apply" not in str(e):
                raise SystemExit(f"a new worker refuses the old CRDs without saying what to apply: {e}") from None
            _say(f"against the old CRDs a new worker exits with: kubestep worker: {e}")
            return 0
    raise SystemExit("a new worker's preflight passed against the old CRDs")


async def main(argv: list[str], runs: dict[str, str]) -> Any:
    what, namespace = argv[0], argv[1]
    if what == "preflight":
        return await preflight()
    async with KubestepClient(namespace=namespace, kubeconfig=os.environ.get("KUBECONFIG")) as client:
        if what == "start":
            return await start(client)
        if what == "progressed":
            await progressed(client, runs)
        elif what == "events":
            await events(client, runs)
        elif what == "check":
            return await check(client, namespace, runs)
        else:
            raise SystemExit(f"unknown command {what}")
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[0] == "preflight":
        sys.exit(asyncio.run(main(args, {})))
    if args[0] == "start":
        with open(args[2], "w") as out:
            json.dump(asyncio.run(main(args, {})), out)
        sys.exit(0)
    with open(args[2]) as f:
        state = json.load(f)
    sys.exit(asyncio.run(main(args, state)))
