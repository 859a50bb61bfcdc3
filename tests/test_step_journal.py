"""The step journal on the real control plane (``_worker/committing.py``, ``_protocol/batches.py``):
steps made durable in StepBatches, replayed from them after a crash, never counted from a holder
that lost its run, and status brought up to date every few seconds and at every phase change."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from kubestep import KubestepClient
from kubestep import _protocol as api
from kubestep._protocol import batches

from .harness import E2E, completed_steps, until, until_phase

pytestmark = pytest.mark.skipif(E2E, reason="starts/stops worker processes: local control plane only")


def batch_entries(control_plane: Any, namespace: str, uid: str) -> list[batches.Entry]:
    out = control_plane.kubectl(
        "-n", namespace, "get", "stepbatches", "-l", batches.member_label(uid), "-o", "json"
    ).stdout
    return [e for item in json.loads(out)["items"] for e in batches.entries_of(item, uid)]


async def test_steps_are_durable_in_batches_and_status_catches_up_every_few_seconds(
    client: KubestepClient, workers: Any, control_plane: Any, run_namespace: str
) -> None:
    workers(name="journalist", env={"KUBESTEP_STATUS_SECONDS": "2"})
    h = await client.start("steps", {"count": 40, "seconds": 0.1})

    async def some_in_batches() -> list[batches.Entry] | None:
        obj = await client._get_object(h.id)
        found = batch_entries(control_plane, run_namespace, obj["metadata"]["uid"])
        return found or None

    entries = await until(some_in_batches, 20, "step records in a StepBatch")
    assert all(e.attempt == 1 for e in entries) and [e.lsn for e in entries] == sorted({e.lsn for e in entries})
    # The SDK's view is exact at any moment (batches folded in); kubectl's is at most a checkpoint old.
    exact = len(completed_steps(await h.status()))

    async def checkpointed() -> dict[str, Any] | None:
        status = (await client._get_object(h.id))["status"]
        return status if int(status.get("stepsCompleted") or 0) >= exact and status.get("currentStep") else None

    status = await until(checkpointed, 10, "status to catch up (KUBESTEP_STATUS_SECONDS=2)")
    assert status["journalLsn"] >= exact and status["currentStep"].startswith("step-")
    columns = control_plane.kubectl("-n", run_namespace, "get", "wfx", h.id).stdout
    assert "STEP" in columns.splitlines()[0], columns
    result = await h.result(timeout=60)
    e = await h.status()
    assert e.status.steps_completed == 40 and len(result["tokens"]) == 40 and e.status.current_step == "step-39"
    done = (await client._get_object(h.id))["status"]
    assert done["journalLsn"] == 40 and not done.get("journalFences"), "the ending wrote every record"


async def test_a_killed_worker_s_steps_are_replayed_from_its_batches_not_run_again(
    client: KubestepClient, workers: Any
) -> None:
    doomed = workers(name="doomed", env={"KUBESTEP_STATUS_SECONDS": "600"})  # no checkpoint: batches only
    h = await client.start("steps", {"count": 6, "seconds": 0.3})

    async def three_done() -> list[Any] | None:
        done = completed_steps(await h.status())
        return done if len(done) >= 3 else None

    before = {s.key: s.output["token"] for s in await until(three_done, 30, "three steps")}
    assert doomed is not None
    doomed.signal(signal.SIGKILL)
    await until_phase(client, h.id, api.Phase.QUEUED, timeout=20)
    workers(name="rescuer")
    await h.result(timeout=30)
    history = await h.steps()
    assert [s.key for s in history] == [f"step-{i}" for i in range(6)]
    for s in history:
        if s.key in before:
            assert s.output["token"] == before[s.key] and s.output["worker"] == "doomed", "replayed, not run again"
    assert history[-1].output["worker"] == "rescuer"


async def test_a_holder_that_lost_its_run_writes_batches_in_vain(
    client: KubestepClient, workers: Any, control_plane: Any, run_namespace: str
) -> None:
    """A frozen worker (SIGSTOP) loses its run to the operator; another claims it, fencing the first
    one's records. Thawed, the first one may finish its step in flight and write it: it never counts."""
    zombie = workers(name="zombie", env={"KUBESTEP_STATUS_SECONDS": "600"})
    h = await client.start("steps", {"count": 5, "seconds": 1.0})

    async def one_done() -> bool:
        return len(completed_steps(await h.status())) >= 1

    await until(one_done, 30, "a step")
    assert zombie is not None
    zombie.signal(signal.SIGSTOP)
    await until_phase(client, h.id, api.Phase.QUEUED, timeout=20)
    workers(name="heir")

    async def claimed_again() -> bool:
        status = (await client._get_object(h.id))["status"]
        return status.get("phase") == api.Phase.RUNNING and status.get("worker") == "heir"

    await until(claimed_again, 20, "the heir's claim")
    fence = {f["attempt"]: f["lsn"] for f in (await client._get_object(h.id))["status"].get("journalFences") or []}
    assert 1 in fence, "the claim fixed how far the lost holder's records count"
    zombie.signal(signal.SIGCONT)
    await h.result(timeout=60)
    history = await h.steps()
    assert [s.key for s in history] == [f"step-{i}" for i in range(5)]
    by_zombie = [s.key for s in history if s.output["worker"] == "zombie"]
    assert by_zombie == [f"step-{i}" for i in range(fence[1])], (by_zombie, fence)
    uid = (await client._get_object(h.id))["metadata"]["uid"]
    late = [e for e in batch_entries(control_plane, run_namespace, uid) if e.attempt == 1 and e.lsn > fence[1]]
    # Whether the thawed worker got its step's record out before it saw the run was lost is a race;
    # either way nothing past the fence is in the history.
    for e in late:
        assert e.record["output"]["token"] not in {s.output["token"] for s in history}


async def test_a_cancelled_run_with_many_records_since_its_checkpoint_archives_them_first(
    client: KubestepClient, workers: Any, control_plane: Any, run_namespace: str
) -> None:
    """A cancel's ending writes the records status does not hold yet into a journal chunk first once
    they are many (``END_ARCHIVE_BYTES``): in status each costs the apiserver a walk against the CRD's
    schema (20 runs timing out together took 1.1 s to be seen), in a ConfigMap they are one string."""
    workers(name="no-checkpoints", env={"KUBESTEP_STATUS_SECONDS": "600"})
    h = await client.start("until-cancelled", {"seconds": 0.01})

    async def many_durable() -> list[batches.Entry] | None:
        uid = (await client._get_object(h.id))["metadata"]["uid"]
        found = batch_entries(control_plane, run_namespace, uid)
        return found if len(found) >= 400 else None

    await until(many_durable, 60, "400 step records in StepBatches (> END_ARCHIVE_BYTES)")
    assert int((await client._get_object(h.id))["status"].get("stepsCompleted") or 0) < 400, "no checkpoint yet"
    await client.cancel_execution(h.id, reason="enough")
    await until_phase(client, h.id, api.Phase.CANCELLED, timeout=30)
    status = (await client._get_object(h.id))["status"]
    done = int(status["stepsCompleted"])
    assert done >= 400 and status.get("journal"), "the ending archived the records into a journal chunk"
    assert len(status["steps"]) <= 10, f"status holds only the last few records, not {len(status['steps'])}"
    history = [s.key for s in await h.steps() if s.state == "Completed"]
    assert history == [f"step-{i}" for i in range(done)], "every record is in the history, in order"
