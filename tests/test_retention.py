"""Retention on the real control plane: a finished run is deleted ``spec.ttlSecondsAfterFinished`` after it
finished, its journal ConfigMaps with it (the garbage collector, through their ownerReferences); a run without a
TTL, and a run with one that has not finished, are kept; a run re-created under a deleted run's name is another
object, never deleted by the old one's plan; and the operator's default (``KUBESTEP_RUN_TTL_SECONDS``) applies to
runs whose spec sets none (an operator of its own, outside the suite operator's ``t-*``, so the default deletes
no other test's runs). The rule itself is unit-tested (``tests/unit/test_retention.py``).

Waits are generous: the machine is shared, and what is asserted is order and presence, never a latency."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kubestep import ExecutionNotFoundError, KubestepClient
from kubestep import _protocol as api
from kubestep._errors import ApiError, InvalidError

from .harness import (
    E2E,
    Proc,
    operator_for,
    private_namespace,
    scrape,
    start_worker,
    until,
    until_phase,
)

local_only = pytest.mark.skipif(E2E, reason="starts its own worker processes: local control plane only, not kind")

# A status window of 2 records: most of a run's history goes to journal ConfigMaps.
ARCHIVING = {"KUBESTEP_STATUS_STEPS": "2"}
STEPS = {"count": 12, "seconds": 0.05}


async def gone(client: KubestepClient, name: str) -> bool:
    try:
        await client.get_execution(name)
    except ExecutionNotFoundError:
        return True
    return False


def config_maps(control_plane: Any, namespace: str) -> set[str]:
    out = control_plane.kubectl("-n", namespace, "get", "configmaps", "-o", "name").stdout.split()
    return {n.removeprefix("configmap/") for n in out}


@local_only
async def test_a_finished_run_goes_after_its_ttl_with_its_journal_and_others_stay(
    client: KubestepClient, workers: Any, control_plane: Any, run_namespace: str
) -> None:
    workers(name="retainer", env=ARCHIVING)
    # Kept: no TTL (the suite's operator has no default), and a TTL on a run that has not finished.
    kept = await client.start("steps", {"count": 1, "seconds": 0.01})
    await kept.wait(60)
    running = await client.start("until-cancelled", {"seconds": 0.05}, ttl_seconds_after_finished=0)
    await until_phase(client, running.id, api.Phase.RUNNING, timeout=60)

    expiring = await client.start("steps", STEPS, ttl_seconds_after_finished=2)
    assert (await expiring.status()).ttl_seconds_after_finished == 2
    finished = await expiring.wait(120)  # the watch saw it Completed before it went
    assert finished.status.phase == "Completed" and finished.status.finished_at is not None
    journal = {j.config_map for j in finished.status.journal}
    assert journal, finished.status  # archived: there is a journal to go with it

    await until(lambda: gone(client, expiring.id), 120, "the run to be deleted at the end of its TTL")
    deleted_by = dt.datetime.now(dt.UTC)
    assert deleted_by >= finished.status.finished_at + dt.timedelta(seconds=2), (deleted_by, finished.status)

    async def journal_collected() -> bool:
        return not journal & config_maps(control_plane, run_namespace)

    await until(journal_collected, 120, "the journal ConfigMaps to go with their run")

    # Meanwhile the run without a TTL is still there, finished, and the running one still runs.
    assert (await kept.status()).status.phase == "Completed"
    assert (await running.status()).status.phase == "Running"
    # Its TTL (0) counts from when it finishes: cancelled, it goes at once.
    assert await client.cancel_execution(running.id, reason="done with it")
    await until(lambda: gone(client, running.id), 120, "the cancelled run with TTL 0 to be deleted")
    assert (await kept.status()).status.phase == "Completed"


@local_only
async def test_a_ttl_set_after_the_run_finished_applies(client: KubestepClient, workers: Any) -> None:
    """Like a Job's: the field may be set (or changed) after the run finished."""
    workers(name="late-ttl")
    h = await client.start("steps", {"count": 1, "seconds": 0.01})
    await h.wait(60)
    await asyncio.sleep(1)
    assert not await gone(client, h.id)
    path = api.execution_path(client.namespace, h.id)
    for bad in (-1, 315_360_001, "1d"):  # the schema's bounds: 0 to ten years, whole seconds
        with pytest.raises(InvalidError):
            await client._kube.merge_patch(path, {"spec": {"ttlSecondsAfterFinished": bad}})
    await client._kube.merge_patch(path, {"spec": {"ttlSecondsAfterFinished": 1}})
    await until(lambda: gone(client, h.id), 120, "the run to be deleted once it was given a TTL")


@local_only
async def test_a_run_recreated_under_a_deleted_runs_name_is_not_deleted_by_the_old_plan(
    client: KubestepClient, workers: Any
) -> None:
    workers(name="recreator")
    name = f"again-{uuid.uuid4().hex[:6]}"
    first = await client.start("steps", {"count": 1, "seconds": 0.01}, name=name, ttl_seconds_after_finished=6)
    done = await first.wait(60)
    assert done.status.finished_at is not None
    old_uid = done.uid
    # Deleted by someone else before its TTL ran out, and re-created at once under the same name, without one.
    await client._kube.delete(api.execution_path(client.namespace, name))
    await until(lambda: gone(client, name), 60, "the first run to be deleted")
    second = await client.start("steps", {"count": 1, "seconds": 0.01}, name=name)
    again = await second.wait(60)
    assert again.uid != old_uid

    # The old plan's time passes; the new run stays.
    expired = done.status.finished_at + dt.timedelta(seconds=6)
    while dt.datetime.now(dt.UTC) < expired + dt.timedelta(seconds=4):
        await asyncio.sleep(0.5)
    assert (await client.get_execution(name)).uid == again.uid

    # And the apiserver refuses a DELETE on the old uid, the request the operator makes: nothing stale
    # can delete the new run.
    options = {
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "propagationPolicy": "Background",
        "preconditions": {"uid": old_uid},
    }
    with pytest.raises(ApiError) as refused:
        await client._kube.request("DELETE", api.execution_path(client.namespace, name), json_body=options)
    assert refused.value.status_code == 409
    assert (await client.get_execution(name)).uid == again.uid


# ----- the operator's default ---------------------------------------------------------------------


@pytest.fixture
async def own_namespace(control_plane: Any) -> AsyncIterator[tuple[str, KubestepClient]]:
    async with private_namespace(control_plane, "retain") as made:
        yield made


@pytest.mark.skipif(E2E, reason="starts its own operator process: local control plane only, not kind")
async def test_the_operators_default_ttl_applies_to_runs_whose_spec_sets_none(
    control_plane: Any, own_namespace: tuple[str, KubestepClient], procs: list[Proc], tmp_path: Path
) -> None:
    namespace, client = own_namespace
    operator, metrics = operator_for(control_plane, tmp_path, namespace, {"KUBESTEP_RUN_TTL_SECONDS": "1"})
    procs.append(operator)
    procs.append(start_worker(control_plane.kubeconfig, tmp_path, namespace, name="defaulted"))

    by_default = await client.start("steps", {"count": 2, "seconds": 0.01})
    own = await client.start("steps", {"count": 2, "seconds": 0.01}, ttl_seconds_after_finished=3600)
    await own.wait(120)
    await until(lambda: gone(client, by_default.id), 120, "the run without a TTL to go by the default")
    assert (await own.status()).status.phase == "Completed"  # its spec's TTL wins

    deleted = await asyncio.to_thread(scrape, metrics)
    assert deleted[("kubestep_operator_runs_deleted_total", ())] >= 1
    assert deleted[("kubestep_operator_expiring_runs", ())] >= 1  # the one with its own TTL
    log = procs[0].log.read_text()
    assert f"deleted {namespace}/{by_default.id}" in log, log[-2000:]
