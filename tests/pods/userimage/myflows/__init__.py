"""A user's workflow module, shipped in an image built FROM the Kubestep image (tests/pods)."""

from __future__ import annotations

import os
from typing import Any

from kubestep import WorkflowContext, workflow


async def _greet(name: str) -> dict[str, Any]:
    # What only a pod of the user's image can say: where this module was loaded from, and which pod ran it.
    return {"greeting": f"hello, {name}", "file": __file__, "pod": os.environ.get("POD_NAME", "")}


@workflow(id="myflows-greet")
async def greet(ctx: WorkflowContext, input: dict[str, Any] | None) -> dict[str, Any]:
    return await ctx.step.run("greet", _greet, (input or {}).get("name", "world"))


# ----- the rolling upgrade (hack/node/upgrade.sh) ------------------------------------------------------
# The same module runs in the user image built FROM the release before the step journal (06e6913) and FROM
# this one, as a user's module would across an upgrade: it uses only what both releases offer. Every
# execution of a step leaves evidence outside Kubestep (an Event about the run, posted with the worker's
# own token before the step returns), so "no recorded step ran twice" is checked from what ran, not from
# what Kubestep recorded.

_SA = "/var/run/secrets/kubernetes.io/serviceaccount"


def _evidence(namespace: str, run: str, key: str, token: str) -> None:
    import datetime as dt
    import json
    import ssl
    import time
    import urllib.error
    import urllib.request

    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    with open(f"{_SA}/token") as f:
        bearer = f.read().strip()
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{run}.executed."},
        "involvedObject": {
            "apiVersion": "kubestep.io/v1alpha1",
            "kind": "WorkflowExecution",
            "name": run,
            "namespace": namespace,
        },
        "reason": "StepExecuted",
        "message": json.dumps({"run": run, "key": key, "token": token, "pod": os.environ.get("POD_NAME", "")}),
        "type": "Normal",
        "source": {"component": "myflows-upgrade"},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    request = urllib.request.Request(
        f"https://{host}:{port}/api/v1/namespaces/{namespace}/events",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
        method="POST",
    )
    tls = ssl.create_default_context(cafile=f"{_SA}/ca.crt")
    error: Exception | None = None
    for attempt in range(20):  # an apiserver busy with a rollout: keep trying, never lose the evidence
        try:
            with urllib.request.urlopen(request, context=tls, timeout=10):
                return
        except urllib.error.HTTPError as e:
            error = e
            if e.code < 500 and e.code != 429:
                break  # refused: trying again would not help
        except OSError as e:  # URLError, timeouts
            error = e
        time.sleep(0.2 * (attempt + 1))
    raise RuntimeError(f"could not post the evidence of {run}/{key}: {error!r}")


def _counted_step(namespace: str, run: str, key: str, seconds: float) -> dict[str, Any]:
    """A synchronous step (run in a thread): sleeps, then leaves its evidence, then returns."""
    import time
    import uuid

    time.sleep(seconds)
    token = uuid.uuid4().hex
    _evidence(namespace, run, key, token)
    return {"key": key, "token": token, "pod": os.environ.get("POD_NAME", ""), "journal": _journals()}


def _journals() -> bool:
    """Whether this worker's Kubestep has the step journal (a release from the upgrade on)."""
    import importlib.util

    return importlib.util.find_spec("kubestep._protocol.batches") is not None


@workflow(id="myflows-upgrade")
async def upgrade(ctx: WorkflowContext, input: dict[str, Any] | None) -> dict[str, Any]:
    """``count`` steps of ``seconds``; after each step index in ``waits``, a wait of ``wait_seconds``;
    after step ``event_after``, a wait for an event of topic ``go``."""
    cfg = input or {}
    waits = {int(i) for i in cfg.get("waits") or []}
    tokens = []
    for i in range(int(cfg.get("count", 10))):
        key = f"step-{i}"
        out = await ctx.step.run(
            key, _counted_step, ctx.namespace, ctx.execution_id, key, float(cfg.get("seconds", 0.2))
        )
        tokens.append(out["token"])
        if i in waits:
            await ctx.step.wait_for(f"wait-{i}", seconds=float(cfg.get("wait_seconds", 5)))
        if cfg.get("event_after") == i:
            await ctx.step.wait_for_event(f"event-{i}", "go")
    return {"steps": len(tokens), "tokens": tokens}
