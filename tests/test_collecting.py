"""The operator collects the StepBatches no run needs any more, on the real apiserver
(``kubestep_operator.collecting``; the rule is ``kubestep._protocol.batches.garbage``).

Batches are created here directly, as a worker's group commit writes them (``kubestep._batches.body``),
with epochs in the past, for runs whose status says what the rule reads (``journalLsn``, ``attempt``,
``journalFences``, set through the status subresource) and for a run deleted afterwards. An operator of
its own (outside the suite operator's ``t-*``) sweeps every second; exactly the garbage batches go, the
needed ones stay, and a group held back by one needed batch goes once that run is checkpointed.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kubestep import KubestepClient, _batches
from kubestep import _protocol as api
from kubestep._protocol import batches as b

from .harness import E2E, Proc, operator_for, private_namespace, scrape, until

pytestmark = pytest.mark.skipif(E2E, reason="starts its own operator process: local control plane only, not kind")

SWEEP = {"KUBESTEP_OPERATOR_COLLECT_SECONDS": "1"}


@pytest.fixture
async def scene(control_plane: Any) -> AsyncIterator[tuple[str, KubestepClient]]:
    async with private_namespace(control_plane, "collect") as made:
        yield made


async def batch_names(client: KubestepClient, namespace: str) -> set[str]:
    listing = await client._kube.get(b.batch_path(namespace))
    return {item["metadata"]["name"] for item in listing["items"]}


async def test_the_operator_collects_exactly_the_batches_no_run_needs(
    control_plane: Any, scene: tuple[str, KubestepClient], procs: list[Proc], tmp_path: Path
) -> None:
    namespace, client = scene
    operator, metrics = operator_for(control_plane, tmp_path, namespace, SWEEP)
    procs.append(operator)
    kube = client._kube

    # The runs, and what their status says.
    statuses = {
        "checkpointed": {"attempt": 1, "journalLsn": 5},  # status reflects every batched record
        "deleted": {"attempt": 1, "journalLsn": 0},  # deleted below
        "superseded": {"attempt": 2, "journalLsn": 1},  # a later attempt holds it, no fence for attempt 1
        "needed": {"attempt": 1, "journalLsn": 2},  # attempt 1 still open, status behind its batch
        "fenced": {"attempt": 2, "journalLsn": 1, "journalFences": [{"attempt": 1, "lsn": 3}]},  # counted at a claim
    }
    uids: dict[str, str] = {}
    for name in statuses:
        handle = await client.start("nobody-serves-this", {}, name=name)
        obj = await kube.get(api.execution_path(namespace, handle.id))
        uids[name] = obj["metadata"]["uid"]

    async def seen_by_the_operator() -> bool:  # it queued them all: its informer holds them
        return all([(await client.get_execution(name)).status.phase == api.Phase.QUEUED for name in statuses])

    # Before anything is deleted: a run the operator never saw counts as gone only once its informer
    # heard from the apiserver HEARD_AFTER (120 s) after the batch was created.
    await until(seen_by_the_operator, 60, "the operator to queue the runs")
    for name, status in statuses.items():
        await kube.merge_patch(api.execution_path(namespace, name, "status"), {"status": status})

    def run(name: str, attempt: int, last: int) -> dict[str, Any]:
        entries = [{"lsn": n, "record": {"key": f"s{n}", "state": "Completed"}} for n in range(1, last + 1)]
        return {"name": name, "uid": uids[name], "attempt": attempt, "entries": entries}

    now = int(time.time())
    settled = now // b.EPOCH_SECONDS - 12  # ended two minutes ago: a group may go
    stale = now // b.EPOCH_SECONDS - 90  # fifteen minutes ago: a straggler may go alone
    ahead = now // b.EPOCH_SECONDS + 360  # a writer whose clock runs an hour ahead: not settled
    batches = {
        # worker wa, one epoch, all garbage: one deletecollection (the only way they can go: two
        # minutes old, they are no stragglers yet)
        "wa-1": ("wa", settled, [run("checkpointed", 1, 5)]),
        "wa-2": ("wa", settled, [run("deleted", 1, 2), run("checkpointed", 1, 3)]),
        "wa-3": ("wa", settled, [run("superseded", 1, 3)]),
        # worker wb, one epoch, held back by the needed run's batch: nothing goes (not 10 minutes old)
        "wb-1": ("wb", settled, [run("needed", 1, 4)]),
        "wb-2": ("wb", settled, [run("checkpointed", 1, 4)]),
        # worker wb, an old epoch, held back by the fenced run's batch: its garbage straggler goes alone
        "wb-old-1": ("wb", stale, [run("fenced", 1, 3)]),
        "wb-old-2": ("wb", stale, [run("deleted", 1, 1)]),
        # all garbage, but its epoch has not ended a minute ago (the writer's clock)
        "wc-1": ("wc", ahead, [run("checkpointed", 1, 5)]),
    }
    for name, (worker, epoch, runs) in batches.items():
        await _batches.write(kube, _batches.body(namespace, name, worker, epoch, runs))
    await kube.delete(api.execution_path(namespace, "deleted"))

    garbage = {"wa-1", "wa-2", "wa-3", "wb-old-2"}
    survivors = set(batches) - garbage

    async def collected() -> bool:
        return await batch_names(client, namespace) == survivors

    try:
        await until(collected, 90, "the garbage batches to be collected")
    except AssertionError as e:
        raise AssertionError(f"{e}: left {sorted(await batch_names(client, namespace))}") from None
    # A few more sweeps: the needed batches stay.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert await batch_names(client, namespace) == survivors
        await asyncio.sleep(0.5)

    def counted() -> float:
        return scrape(metrics).get(("kubestep_operator_batches_collected_total", ()), 0.0)

    assert counted() == len(garbage)
    said = re.findall(r"INFO kubestep\.operator: collected (\d+) StepBatches", procs[0].log.read_text(errors="replace"))
    assert sum(map(int, said)) == len(garbage), procs[0].tail()

    # The needed run is checkpointed past its batch: its group now goes, in one request.
    await kube.merge_patch(api.execution_path(namespace, "needed", "status"), {"status": {"journalLsn": 4}})
    survivors -= {"wb-1", "wb-2"}
    await until(collected, 90, "the group held back by the needed run to be collected")
    assert counted() == len(garbage) + 2
    assert "wb-old-1" in await batch_names(client, namespace)  # the fenced run's batch still counts
