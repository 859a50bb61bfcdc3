"""StepBatch objects on the apiserver: write one, read a run's entries back (the rules are in
``_protocol/batches.py``)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from . import _protocol as api
from ._errors import ConflictError
from ._kube import Kube
from ._protocol import batches as b

LIST_PAGE = 500


def worker_label(worker: str) -> str:
    """A label value for a worker's name (at most 63 characters: a long one is hashed)."""
    if len(worker) <= 63:
        return worker
    return worker[:46].rstrip("-.") + "-" + hashlib.sha256(worker.encode()).hexdigest()[:16]


def body(namespace: str, name: str, worker: str, epoch: int, runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A StepBatch. ``runs``: ``[{name, uid, attempt, entries: [{lsn, record}]}]``, one per run."""
    labels = {b.LABEL_BATCH_WORKER: worker_label(worker), b.LABEL_EPOCH: str(epoch)}
    for run in runs:
        labels[b.member_label(run["uid"])] = f"{run['attempt']}.{run['entries'][-1]['lsn']}"
    return {
        "apiVersion": api.API_VERSION,
        "kind": b.BATCH_KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"worker": worker, "runsJSON": b.runs_json(list(runs))},
    }


async def write(kube: Kube, batch: dict[str, Any]) -> None:
    """Creates ``batch``; one already there under its name is this very batch, written by an
    earlier try whose answer was lost (names are never reused: the writer's boot id is in them)."""
    meta = batch["metadata"]
    try:
        await kube.request("POST", b.batch_path(meta["namespace"]), json_body=batch)
    except ConflictError as exc:
        if (exc.body or {}).get("reason") != "AlreadyExists":
            raise


async def entries(kube: Kube, namespace: str, uid: str) -> list[b.Entry]:
    """Every entry any batch in ``namespace`` holds for the run ``uid`` (what counts is
    ``batches.counted``'s to say). A consistent read, so nothing written before it is missed."""
    out: list[b.Entry] = []
    params: dict[str, Any] = {"labelSelector": b.member_label(uid), "limit": LIST_PAGE}
    while True:
        page = await kube.get(b.batch_path(namespace), params)
        for item in page.get("items") or []:
            out += b.entries_of(item, uid)
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return out
        params = {**params, "continue": token}
