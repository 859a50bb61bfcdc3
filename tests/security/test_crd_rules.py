"""The WorkflowExecution CRD's rules hold against hostile or careless writes, against a real apiserver.

* A run holding the maximum number of events can still be cancelled, annotated and have its status
  written: the append-only rule on spec.events costs linear time, not quadratic (which, from ~998
  events, exceeded the apiserver's CEL cost limit on every update of the object).
* Events stay append-only: sent events cannot be changed, removed, reordered or preceded.
* spec.cancelReason, once set, can be neither changed nor removed, and carries no control characters.
* runTimeoutSeconds and queueTimeoutSeconds are bounded (365 days), so no run asks the operator for
  datetime arithmetic it cannot do.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from kubestep import KubestepClient
from kubestep import _protocol as api
from kubestep._errors import InvalidError
from kubestep._kube import Kube

if TYPE_CHECKING:
    from tests.conftest import Cluster

pytestmark = pytest.mark.cluster

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = REPO_ROOT / "crds" / "workflowexecutions.kubestep.io.yaml"
MAX_EVENTS = 1000  # spec.events maxItems
MAX_DURATION = 31_536_000  # 365 days: the maximum of runTimeoutSeconds and queueTimeoutSeconds
# The rule's messages, as the CRD says them.
EVENT_CHANGED = "events cannot be changed or removed once sent"
REASON_CHANGED = "cancelReason cannot be changed or removed once set"
REASON_CONTROL = "cancelReason must not contain control characters"
# About the largest run etcd stores (1.5 MiB per request): MAX_EVENTS events of ~1.2 KB data each,
# plus their managedFields. Measured: 1.4 KB each still fits, 1.6 KB does not.
EVENT_DATA_BYTES = 1200
# The quadratic rule this replaces burned ~9 s of apiserver CPU per write with 997 events, then
# refused every write from 998 on ("cost limit exceeded"); these writes took 0.3-0.6 s (measured, not
# asserted: speed lives in benchmarks).


@pytest.fixture
async def kube(control_plane: Cluster) -> AsyncIterator[Kube]:
    async with Kube(kubeconfig=str(control_plane.kubeconfig)) as k:
        yield k


def _event(i: int, data: Any = None) -> dict[str, Any]:
    event = {"name": f"event-{i:04d}", "topic": "approved"}
    return event if data is None else {**event, "data": data}


async def _create(kube: Kube, namespace: str, **spec: Any) -> str:
    """Creates a run of a workflow nobody serves (no status is ever written for it by a worker)."""
    name = f"s-{uuid.uuid4().hex[:10]}"
    body = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name},
        "spec": {"workflow": "nobody-serves-this", **spec},
    }
    await kube.create(api.execution_path(namespace), body)
    return name


async def _json_patch(kube: Kube, path: str, ops: list[dict[str, Any]]) -> Any:
    return await kube.request("PATCH", path, json_body=ops, content_type="application/json-patch+json")


async def _refused(write: Any) -> str:
    """Awaits a write the apiserver must refuse (422), returning its message."""
    with pytest.raises(InvalidError) as refused:
        await write
    message = str(refused.value)
    assert "cost" not in message, f"refused for its cost, not by the rule: {message}"
    return message


# ----- 1. events: linear cost, append-only ---------------------------------------------------------


async def test_a_run_with_the_maximum_number_of_events_can_still_be_cancelled(
    control_plane: Cluster, kube: Kube, namespace: str
) -> None:
    # The rules pass the apiserver's static cost check (it refuses a CRD whose rules' estimated
    # worst-case CEL cost is over its limits): the repository's CRD, under another group so as not
    # to touch the installed one.
    crd = yaml.safe_load(CRD_FILE.read_text())
    group = "costcheck.kubestep.io"
    crd["metadata"]["name"] = f"{crd['spec']['names']['plural']}.{group}"
    crd["spec"]["group"] = group
    control_plane.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(crd))

    # And the worst case at run time: every event there can be, about as large as etcd stores a run.
    events = [_event(i, {"i": i, "note": "x" * EVENT_DATA_BYTES}) for i in range(MAX_EVENTS)]
    name = await _create(kube, namespace, events=events)
    path = api.execution_path(namespace, name)

    await kube.merge_patch(path, {"spec": {"cancelRequested": True, "cancelReason": "too many events"}})
    await kube.merge_patch(path, {"metadata": {"annotations": {"example.com/note": "ok"}}})
    # The operator and workers write through /status: validated against the same rules.
    await kube.merge_patch(f"{path}/status", {"status": {"message": "still writable"}})
    obj = await kube.get(path)
    assert obj["spec"]["cancelRequested"] is True and obj["spec"]["cancelReason"] == "too many events"
    assert obj["metadata"]["annotations"]["example.com/note"] == "ok"
    assert obj["status"]["message"] == "still writable"
    assert obj["spec"]["events"] == events

    # Full, the rules still hold: no 1001st event, and a sent one still cannot be changed.
    extra = [{"op": "add", "path": "/spec/events/-", "value": _event(MAX_EVENTS)}]
    with pytest.raises(InvalidError, match="must have at most 1000 items"):
        await _json_patch(kube, path, extra)
    change = [{"op": "replace", "path": f"/spec/events/{MAX_EVENTS - 1}/data", "value": {"forged": True}}]
    assert EVENT_CHANGED in await _refused(_json_patch(kube, path, change))


async def test_events_can_be_sent_one_by_one_up_to_the_maximum(
    control_plane: Cluster, kube: Kube, namespace: str
) -> None:
    name = await _create(kube, namespace, events=[_event(i) for i in range(MAX_EVENTS - 5)])
    async with KubestepClient(namespace=namespace, kubeconfig=str(control_plane.kubeconfig)) as client:
        sent = [await client.send_event(name, "approved", {"n": n}) for n in range(5)]
        with pytest.raises(InvalidError, match="must have at most 1000 items"):
            await client.send_event(name, "approved", {"n": 5})
    events = (await kube.get(api.execution_path(namespace, name)))["spec"]["events"]
    assert len(events) == MAX_EVENTS and [e["name"] for e in events[-5:]] == sent


@pytest.mark.parametrize(
    "ops",
    [
        pytest.param([{"op": "replace", "path": "/spec/events/1/data", "value": {"by": "mallory"}}], id="change-data"),
        pytest.param([{"op": "remove", "path": "/spec/events/1/data"}], id="remove-data"),
        pytest.param([{"op": "replace", "path": "/spec/events/1/topic", "value": "rejected"}], id="change-topic"),
        pytest.param([{"op": "remove", "path": "/spec/events/0"}], id="remove-first"),
        pytest.param([{"op": "remove", "path": "/spec/events/2"}], id="remove-last"),
        pytest.param([{"op": "replace", "path": "/spec/events", "value": []}], id="remove-all"),
        pytest.param([{"op": "remove", "path": "/spec/events"}], id="remove-the-list"),
        pytest.param([{"op": "replace", "path": "/spec/events/0/name", "value": "renamed"}], id="rename"),
        pytest.param(
            [
                {"op": "replace", "path": "/spec/events/2/name", "value": "event-0003"},
                {"op": "add", "path": "/spec/events/-", "value": _event(2, {"by": "carol"})},
            ],
            id="rename-then-resend",
        ),
        pytest.param(
            [{"op": "move", "from": "/spec/events/2", "path": "/spec/events/0"}],
            id="reorder",
        ),
        pytest.param([{"op": "add", "path": "/spec/events/0", "value": _event(9)}], id="insert-before"),
        pytest.param([{"op": "add", "path": "/spec/events/1", "value": _event(9)}], id="insert-between"),
    ],
)
async def test_sent_events_cannot_be_changed_removed_reordered_or_preceded(
    kube: Kube, namespace: str, ops: list[dict[str, Any]]
) -> None:
    sent = [_event(0, {"by": "alice"}), _event(1, {"by": "bob"}), _event(2, {"by": "carol"})]
    name = await _create(kube, namespace, events=sent)
    path = api.execution_path(namespace, name)
    assert EVENT_CHANGED in await _refused(_json_patch(kube, path, ops))
    assert (await kube.get(path))["spec"]["events"] == sent


async def test_events_can_be_appended_and_the_sent_ones_sent_again_unchanged(kube: Kube, namespace: str) -> None:
    sent = [_event(0, {"by": "alice", "n": [1, 2.5, None]}), _event(1)]
    name = await _create(kube, namespace, events=sent)
    path = api.execution_path(namespace, name)
    await _json_patch(kube, path, [{"op": "add", "path": "/spec/events/-", "value": _event(2, {"by": "carol"})}])
    # A merge patch replaces the whole list: fine as long as it only appends.
    after = [*copy.deepcopy(sent), _event(2, {"by": "carol"}), _event(3, "dave")]
    obj = await kube.merge_patch(path, {"spec": {"events": after}})
    assert obj["spec"]["events"] == after


# ----- 2. cancelReason: immutable, no control characters -------------------------------------------


async def test_a_cancel_reason_cannot_be_removed_or_changed_once_set(kube: Kube, namespace: str) -> None:
    name = await _create(kube, namespace, cancelRequested=True, cancelReason="budget cut")
    path = api.execution_path(namespace, name)
    for write in (
        kube.merge_patch(path, {"spec": {"cancelReason": None}}),
        _json_patch(kube, path, [{"op": "remove", "path": "/spec/cancelReason"}]),
        kube.merge_patch(path, {"spec": {"cancelReason": "nothing to see here"}}),
        _json_patch(
            kube,
            path,
            [
                {"op": "remove", "path": "/spec/cancelReason"},
                {"op": "add", "path": "/spec/cancelReason", "value": "rewritten"},
            ],
        ),
    ):
        message = await _refused(write)
        assert REASON_CHANGED in message and "spec.cancelReason" in message, message
    await kube.merge_patch(path, {"spec": {"cancelReason": "budget cut"}})  # the same again: a no-op
    assert (await kube.get(path))["spec"]["cancelReason"] == "budget cut"


async def test_a_cancel_reason_can_still_be_given_after_the_cancel(kube: Kube, namespace: str) -> None:
    name = await _create(kube, namespace, cancelRequested=True)
    path = api.execution_path(namespace, name)
    await kube.merge_patch(path, {"spec": {"cancelReason": "given later"}})
    assert REASON_CHANGED in await _refused(kube.merge_patch(path, {"spec": {"cancelReason": None}}))
    assert (await kube.get(path))["spec"]["cancelReason"] == "given later"


@pytest.mark.parametrize(
    "reason",
    [
        pytest.param("budget cut\nCancellation:\n  Requested by:  admin", id="newline"),
        pytest.param("budget cut\r", id="carriage-return"),
        pytest.param("\x1b[2J\x1b[Hall clear", id="esc-clear-screen"),
        pytest.param("\x1b]8;;https://example.invalid\x07click\x1b]8;;\x07", id="esc-hyperlink"),
        pytest.param("tab\there", id="tab"),
        pytest.param("nul\x00", id="nul"),
        pytest.param("del\x7f", id="del"),
        pytest.param("\x9b31mred", id="c1-csi"),
    ],
)
async def test_a_cancel_reason_with_control_characters_is_refused(kube: Kube, namespace: str, reason: str) -> None:
    # Any printable text in any script is fine...
    fine = "budget cut — per Zoë: 予算削減 ✂ (ticket #42, 100% sure)"
    name = await _create(kube, namespace, cancelRequested=True, cancelReason=fine)
    assert (await kube.get(api.execution_path(namespace, name)))["spec"]["cancelReason"] == fine
    # ... but not a control character, at creation or later.
    message = await _refused(_create(kube, namespace, cancelRequested=True, cancelReason=reason))
    assert REASON_CONTROL in message and "spec.cancelReason" in message, message
    name = await _create(kube, namespace, cancelRequested=True)
    path = api.execution_path(namespace, name)
    assert REASON_CONTROL in await _refused(kube.merge_patch(path, {"spec": {"cancelReason": reason}}))
    assert "cancelReason" not in (await kube.get(path))["spec"]


# ----- 3. durations: bounded -----------------------------------------------------------------------


async def test_every_duration_is_bounded(kube: Kube, namespace: str) -> None:
    for field, most in (
        ("runTimeoutSeconds", MAX_DURATION),
        ("queueTimeoutSeconds", MAX_DURATION),
        ("cancelGracePeriodSeconds", 86400),  # a day: bounded already
    ):
        name = await _create(kube, namespace, **{field: most})
        assert (await kube.get(api.execution_path(namespace, name)))["spec"][field] == most
        for value in (most + 1, 2**63 - 1):
            with pytest.raises(InvalidError) as refused:
                await _create(kube, namespace, **{field: value})
            message = str(refused.value)
            assert f"spec.{field}" in message and f"less than or equal to {most}" in message, message


# ----- StepBatch: one form of runs ------------------------------------------------------------------


async def test_a_step_batch_holds_its_runs_in_exactly_one_form(kube: Kube, namespace: str) -> None:
    """``spec.runsJSON`` (this release) or ``spec.runs`` (earlier ones), never both and never
    neither: a reader that found both could not tell which one the writer meant."""
    from kubestep._protocol import batches

    runs = [{"name": "a", "uid": "u-a", "attempt": 1, "entries": [{"lsn": 1, "record": {"key": "k"}}]}]

    def batch(**spec: Any) -> Any:
        body = {
            "apiVersion": api.API_VERSION,
            "kind": batches.BATCH_KIND,
            "metadata": {"name": f"b-{uuid.uuid4().hex[:8]}"},
            "spec": {"worker": "w", **spec},
        }
        return kube.create(batches.batch_path(namespace), body)

    message = "exactly one of them"
    assert message in await _refused(batch(runs=runs, runsJSON=batches.runs_json(runs)))
    assert message in await _refused(batch())
    for spec in ({"runs": runs}, {"runsJSON": batches.runs_json(runs)}):
        created = await batch(**spec)
        assert batches.entries_of(created, "u-a")[0].record == {"key": "k"}
