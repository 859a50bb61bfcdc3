"""The upgrade guard: a worker of a release from before the step journal cannot claim a run whose
newest steps are in StepBatches, against a real apiserver (docs/install.md, Upgrading).

A worker of 06e6913 (the release before the step journal) reads only status when it claims a run.
A run held by a worker of this release may have step records in StepBatches that status does not
reflect yet (status is checkpointed every few seconds), so an old worker's claim would run those steps
again. The WorkflowExecution CRD refuses a claim (a new ``status.attempt``) that does not name the
journal holder (``status.journalHolder``, set by every claim of this release) once one is set. These
tests send the writes each party really sends (the old claim as 06e6913 sends it, a PUT of the whole
status, and as a merge patch) and check that the refusal says what to do, and that no legitimate write
is refused: this release's claims, the operator's and the holder's writes, and any claim of a run no
journaling worker ever held (so old workers go on running old runs during a rollout).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from kubestep import _protocol as api
from kubestep._kube import Kube

from .test_crd_rules import _refused  # a write the apiserver must refuse (422), by the rule

if TYPE_CHECKING:
    from tests.conftest import Cluster

pytestmark = pytest.mark.cluster

# The rule's message, as the CRD says it (the part an operator searching logs would see).
GUARD = "only a worker that reads it may claim the run"


@pytest.fixture
async def kube(control_plane: Cluster) -> AsyncIterator[Kube]:
    async with Kube(kubeconfig=str(control_plane.kubeconfig)) as k:
        yield k


@pytest.fixture
def namespace(control_plane: Cluster) -> Iterator[str]:
    """A namespace no operator serves (the suite's serves ``t-*``): these tests write status as each
    party would, and an operator deciding on the same runs would race them."""
    name = f"guard-{uuid.uuid4().hex[:10]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


async def _queued_run(kube: Kube, namespace: str) -> dict[str, Any]:
    """A run of a workflow nobody serves, admitted (Queued) as the operator admits it."""
    name = f"g-{uuid.uuid4().hex[:10]}"
    body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name}, "spec": {"workflow": "nobody"}}
    obj = await kube.create(api.execution_path(namespace), body)
    patch = api.queued(None, served=True, message="admitted", at=api.now(), generation=1)
    return dict(await kube.update_status(obj, patch))


def _old_claim(obj: dict[str, Any], worker: str) -> dict[str, Any]:
    """The claim a worker of 06e6913 writes: ``api.claimed`` (unchanged since) and nothing else."""
    status = obj.get("status") or {}
    return api.claimed(
        obj["spec"],
        status,
        worker=worker,
        attempt=int(status.get("attempt") or 0) + 1,
        at=api.now(),
        generation=obj["metadata"].get("generation"),
    )


def _previous_claim(obj: dict[str, Any], worker: str) -> dict[str, Any]:
    """The claim of 8598b30 (StepBatches as spec.runs): the same, naming the journal holder."""
    return {**_old_claim(obj, worker), "journalHolder": worker}


def _new_claim(obj: dict[str, Any], worker: str) -> dict[str, Any]:
    """The claim of this release (``running.Run._claim_once``): naming itself the journal reader too."""
    return {**_previous_claim(obj, worker), "journalReader": worker}


def _requeued_by_operator(obj: dict[str, Any]) -> dict[str, Any]:
    return api.requeued(api.Reason.WORKER_LOST, "worker lost", api.now(), deadline=None)


async def _merge_patch_status(kube: Kube, obj: dict[str, Any], patch: dict[str, Any]) -> Any:
    path = api.execution_path(obj["metadata"]["namespace"], obj["metadata"]["name"]) + "/status"
    return await kube.request("PATCH", path, json_body={"status": patch}, content_type="application/merge-patch+json")


async def test_a_run_no_journaling_worker_held_is_claimed_the_old_way_and_the_new(kube: Kube, namespace: str) -> None:
    """Old workers keep running old runs during a rollout: no journal holder, no guard."""
    obj = await _queued_run(kube, namespace)
    obj = await kube.update_status(obj, _old_claim(obj, "old-worker-a"))  # attempt 1, the old way
    assert obj["status"]["attempt"] == 1 and "journalHolder" not in obj["status"]
    obj = await kube.update_status(obj, {"steps": [], "stepsCompleted": 0})  # the old holder's step writes
    obj = await kube.update_status(obj, _requeued_by_operator(obj))  # its pod was replaced: lost
    obj = await _merge_patch_status(kube, obj, _old_claim(obj, "old-worker-b"))  # attempt 2, old, as a merge patch
    assert obj["status"]["attempt"] == 2
    obj = await kube.update_status(obj, api.requeued(api.Reason.HANDED_BACK, "shutting down", api.now(), deadline=None))
    obj = await kube.update_status(obj, _new_claim(obj, "new-worker-a"))  # a new worker resumes it
    assert (obj["status"]["attempt"], obj["status"]["journalHolder"]) == (3, "new-worker-a")


async def test_an_old_claim_of_a_journaled_run_is_refused_and_says_why(kube: Kube, namespace: str) -> None:
    obj = await _queued_run(kube, namespace)
    obj = await kube.update_status(obj, _new_claim(obj, "new-worker-a"))
    # The holder's checkpoint and the operator's writes while it holds the run: never a new attempt.
    obj = await kube.update_status(obj, {"journalLsn": 3, "stepsCompleted": 3, "currentStep": "step-2"})
    obj = await kube.update_status(obj, _requeued_by_operator(obj))  # its Lease expired: lost
    assert obj["status"]["journalHolder"] == "new-worker-a" and "worker" not in obj["status"]

    # A worker of 06e6913 claims it: a PUT of the whole status (its update_status), then a merge patch.
    message = await _refused(kube.update_status(obj, _old_claim(obj, "old-worker-b")))
    assert GUARD in message and "finish the upgrade" in message, message
    message = await _refused(_merge_patch_status(kube, obj, _old_claim(obj, "old-worker-b")))
    assert GUARD in message, message
    # Naming another worker as the holder is refused too: only the claimant may be.
    forged = {**_old_claim(obj, "old-worker-b"), "journalHolder": "new-worker-a"}
    assert GUARD in await _refused(_merge_patch_status(kube, obj, forged))
    # Removing the holder in the same write does not get round it (the rule reads the old object).
    assert GUARD in await _refused(
        _merge_patch_status(kube, obj, {**_old_claim(obj, "old-worker-b"), "journalHolder": None})
    )

    fresh = await kube.get(api.execution_path(namespace, obj["metadata"]["name"]))
    assert fresh["status"]["phase"] == api.Phase.QUEUED and fresh["status"]["attempt"] == 1, "still queued, untouched"
    # A worker of this release claims it: it reads the batches and names itself.
    obj = await kube.update_status(fresh, _new_claim(fresh, "new-worker-b"))
    assert (obj["status"]["attempt"], obj["status"]["worker"], obj["status"]["journalHolder"]) == (
        2,
        "new-worker-b",
        "new-worker-b",
    )


async def test_the_operator_and_the_holder_write_a_journaled_run_as_before(kube: Kube, namespace: str) -> None:
    """Every write that is not a claim keeps the attempt, so the guard never judges it."""
    obj = await _queued_run(kube, namespace)
    obj = await kube.update_status(obj, _new_claim(obj, "new-worker-a"))
    path = api.execution_path(namespace, obj["metadata"]["name"])
    # The operator's Cancelling write: a JSON patch guarded by test operations (reconciling.py).
    await kube.guarded_patch(
        path + "/status",
        {"phase": api.Phase.CANCELLING, "reason": "Requested", "message": "cancellation requested"},
        {"phase": api.Phase.RUNNING, "worker": "new-worker-a"},
    )
    obj = await kube.get(path)
    # The holder acknowledges it: the run ends Cancelled, holder and attempt unchanged.
    stop: api.Cancellation = {"reason": "Requested", "requestedAt": api.fmt_time(api.now())}
    ended = api.cancelled(
        obj["status"].get("conditions"), stop, by="new-worker-a", message="done", at=api.now(), generation=1
    )
    obj = await kube.update_status(obj, ended)
    assert obj["status"]["phase"] == api.Phase.CANCELLED and obj["status"]["attempt"] == 1

    # A Waiting run woken by the operator, then claimed by this release, and a worker's hand-back.
    obj = await _queued_run(kube, namespace)
    obj = await kube.update_status(obj, _new_claim(obj, "new-worker-a"))
    obj = await kube.update_status(obj, api.waiting("nap", "waiting", wake_at=api.now()))
    obj = await kube.update_status(obj, api.woken(api.Reason.WAIT_OVER, "wait over", api.now(), 1))
    obj = await kube.update_status(obj, _new_claim(obj, "new-worker-b"))
    obj = await kube.update_status(obj, api.requeued(api.Reason.HANDED_BACK, "shutting down", api.now(), deadline=None))
    assert (obj["status"]["phase"], obj["status"]["attempt"]) == (api.Phase.QUEUED, 2)


# The rule's message for the StepBatch form of this release (spec.runsJSON).
READER_GUARD = "only a worker that reads them may claim the run"


async def test_a_claim_by_the_release_before_runs_json_is_refused_once_this_release_held_the_run(
    kube: Kube, namespace: str
) -> None:
    """A worker of 8598b30 reads only spec.runs: it would find none of a holder's newest records in
    this release's batches and run those steps again. During a rollout it still takes the runs only
    its own release held."""
    obj = await _queued_run(kube, namespace)
    obj = await kube.update_status(obj, _previous_claim(obj, "previous-a"))  # held by the release before
    obj = await kube.update_status(obj, _requeued_by_operator(obj))
    obj = await kube.update_status(obj, _previous_claim(obj, "previous-b"))  # ...and claimed by it again
    obj = await kube.update_status(obj, _requeued_by_operator(obj))
    obj = await kube.update_status(obj, _new_claim(obj, "new-a"))  # this release takes it over
    obj = await kube.update_status(obj, {"journalLsn": 4, "stepsCompleted": 4})
    obj = await kube.update_status(obj, _requeued_by_operator(obj))  # its pod was killed
    for write in (
        kube.update_status(obj, _previous_claim(obj, "previous-b")),
        _merge_patch_status(kube, obj, _previous_claim(obj, "previous-b")),
    ):
        message = await _refused(write)
        assert READER_GUARD in message and "finish the upgrade" in message, message
    forged = {**_previous_claim(obj, "previous-b"), "journalReader": "new-a"}
    assert READER_GUARD in await _refused(_merge_patch_status(kube, obj, forged))
    obj = await kube.update_status(obj, _new_claim(obj, "new-b"))
    assert (obj["status"]["attempt"], obj["status"]["journalReader"]) == (4, "new-b")
