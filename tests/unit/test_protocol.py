"""The status contract (``kubestep._protocol``): transitions × writer, and the rules both writers share.

The "who writes what" table of ``docs/design.md`` is pinned here: each transition builder is
registered with the phase it leads to and the writers that may make it, and every field a builder
writes must belong to each of its writers. The bugs the shared builders fixed have a test each.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from kubestep import _protocol as api
from kubestep._protocol import Phase, Reason, StopReason, Writer
from kubestep._worker.letting_go import let_go
from kubestep_operator.reconciling import Liveness, Snapshot, decide

T0 = dt.datetime(2026, 11, 25, 12, 0, 0, tzinfo=dt.UTC)
ROOT = Path(__file__).resolve().parents[2]

# Status fields each writer owns (docs/design.md, "who writes what").
OWNED = {
    Writer.OPERATOR: {
        "phase",
        "reason",
        "message",
        "queuedAt",
        "conditions",
        "observedGeneration",
        "cancellation",
        "finishedAt",
        "worker",
        "deadline",
        "wakeAt",
        "budgetRemainingSeconds",
    },
    Writer.WORKER: {
        "phase",
        "reason",
        "message",
        "worker",
        "attempt",
        "startedAt",
        "deadline",
        "budgetRemainingSeconds",
        "wakeAt",
        "waitingFor",
        "conditions",
        "queuedAt",
        "cancellation",
        "finishedAt",
        "result",
        "error",
        "observedGeneration",
        "steps",
        "stepsCompleted",
        "eventsConsumed",
        "journal",
    },
}
BOTH = {Writer.OPERATOR, Writer.WORKER}
RUNNING = {"phase": Phase.RUNNING, "worker": "w", "deadline": api.fmt_time(T0 + dt.timedelta(seconds=4))}
STOP = api.stop_record(StopReason.REQUESTED, T0)

# transition, writers, from, to, a call of its builder
TABLE: list[tuple[str, set[Writer], str | None, Phase | None, Any]] = [
    ("queued", {Writer.OPERATOR}, None, Phase.QUEUED,
        lambda: api.queued(None, served=True, message="m", at=T0, generation=1)),
    ("queue_refreshed", {Writer.OPERATOR}, Phase.QUEUED, None,
        lambda: api.queue_refreshed(None, served=False, message="m", at=T0, generation=1)),
    ("woken", {Writer.OPERATOR}, Phase.WAITING, Phase.QUEUED,
        lambda: api.woken(Reason.WAIT_OVER, "m", T0, 1)),
    ("requeued", BOTH, Phase.RUNNING, Phase.QUEUED,
        lambda: api.requeued(Reason.WORKER_LOST, "m", T0, deadline=T0 + dt.timedelta(seconds=1))),
    ("claimed", {Writer.WORKER}, Phase.QUEUED, Phase.RUNNING,
        lambda: api.claimed({"runTimeoutSeconds": 5}, {}, worker="w", attempt=1, at=T0, generation=1)),
    ("waiting", {Writer.WORKER}, Phase.RUNNING, Phase.WAITING,
        lambda: api.waiting("k", "m", wake_at=T0)),
    ("cancelling", {Writer.OPERATOR}, Phase.RUNNING, Phase.CANCELLING,
        lambda: api.cancelling(STOP, "m", 1)),
    ("cancelled", BOTH, Phase.CANCELLING, Phase.CANCELLED,
        lambda: api.cancelled(None, STOP, by="w", message="m", at=T0, generation=1)),
    ("completed", {Writer.WORKER}, Phase.RUNNING, Phase.COMPLETED,
        lambda: api.completed(None, {"x": 1}, T0, 1)),
    ("failed", {Writer.WORKER}, Phase.RUNNING, Phase.FAILED,
        lambda: api.failed(None, {"type": "E", "message": "m"}, Reason.WORKFLOW_ERROR, "m", T0, 1)),
]  # fmt: skip


def test_the_table_lists_every_transition_once() -> None:
    assert sorted(name for name, *_ in TABLE) == sorted(api.TRANSITIONS)


@pytest.mark.parametrize(("name", "writers", "source", "to", "build"), TABLE, ids=[t[0] for t in TABLE])
def test_transition_by_writer(
    name: str, writers: set[Writer], source: str | None, to: Phase | None, build: Any
) -> None:
    registered = api.TRANSITIONS[name]
    assert registered.writers == writers and registered.to == to
    patch = build()
    assert patch.get("phase") == to
    assert patch["reason"] in registered.reasons
    for writer in writers:
        assert set(patch) <= OWNED[writer], f"{writer} would write {set(patch) - OWNED[writer]}"
    if to in api.TERMINAL_PHASES:  # kubectl wait --for=condition=Finished
        finished = [c for c in patch["conditions"] if c["type"] == api.ConditionType.FINISHED]
        assert finished and finished[0]["status"] == "True" and patch["deadline"] is None


def test_the_design_doc_names_every_transition() -> None:
    design = (ROOT / "docs" / "design.md").read_text()
    for name in api.TRANSITIONS:
        assert f"`{name}`" in design, f"docs/design.md does not list the transition {name!r}"


def test_no_writer_writes_the_dead_segment_field() -> None:
    # segmentStartedAt was written in five places and read in none: gone from builders and schema.
    crd = (ROOT / "crds" / "workflowexecutions.kubestep.io.yaml").read_text()
    assert "segmentStartedAt" not in crd
    for _name, _w, _s, _to, build in TABLE:
        assert "segmentStartedAt" not in build()


# ----- the operator writes only its own fields -------------------------------------------------


def _snap(status: dict[str, Any], cancel: bool = False) -> Snapshot:
    return Snapshot.from_body(
        {
            "metadata": {"namespace": "ns", "name": "r", "resourceVersion": "1", "generation": 1},
            "spec": {"workflow": "wf", "cancelRequested": cancel, "runTimeoutSeconds": 2, "queueTimeoutSeconds": 1},
            "status": status,
        }
    )


LIVE = Liveness(T0 + dt.timedelta(seconds=10), frozenset({"wf"}))
GONE = Liveness(T0 - dt.timedelta(seconds=1), frozenset({"wf"}))
PAST = api.fmt_time(T0 - dt.timedelta(seconds=1))
FUTURE = api.fmt_time(T0 + dt.timedelta(seconds=1))


@pytest.mark.parametrize(
    ("status", "cancel", "lease"),
    [
        ({}, False, LIVE),
        ({}, True, LIVE),
        ({"phase": "Queued", "queuedAt": PAST}, False, LIVE),
        ({"phase": "Queued"}, False, LIVE),
        ({"phase": "Waiting", "wakeAt": PAST}, False, LIVE),
        ({"phase": "Waiting", "wakeAt": FUTURE}, True, LIVE),
        ({"phase": "Running", "worker": "w", "deadline": PAST}, False, LIVE),
        ({"phase": "Running", "worker": "w", "deadline": FUTURE}, True, LIVE),
        ({"phase": "Running", "worker": "w", "deadline": FUTURE}, False, GONE),
        ({"phase": "Running", "worker": "w", "deadline": PAST}, False, GONE),
        (
            {"phase": "Cancelling", "worker": "w", "cancellation": {"reason": "Requested", "requestedAt": PAST}},
            True,
            GONE,
        ),
    ],
)
def test_every_operator_decision_writes_only_operator_fields(
    status: dict[str, Any], cancel: bool, lease: Liveness
) -> None:
    d = decide(_snap(status, cancel), T0 + dt.timedelta(seconds=3), lambda ns, w: lease, frozenset({"wf"}), T0)
    assert d.patch is not None
    assert set(d.patch) <= OWNED[Writer.OPERATOR]


# ----- the bugs the shared builders fixed -------------------------------------------------------


def _held(status: dict[str, Any], cancel: bool = False) -> dict[str, Any]:
    return {
        "metadata": {"name": "r", "generation": 1},
        "spec": {"workflow": "wf", "cancelRequested": cancel, "runTimeoutSeconds": 10},
        "status": {"phase": Phase.RUNNING, "worker": "w", **status},
    }


def test_a_worker_letting_go_of_a_run_past_its_budget_ends_it_instead_of_requeueing_it() -> None:
    # Before: let_go ignored an expired deadline that the operator honours, and the run was
    # re-queued to be claimed with a fresh budget.
    deadline = api.now() - dt.timedelta(seconds=1)
    patch = let_go(_held({"deadline": api.fmt_time(deadline)}), "w", "worker w could not go on")
    assert patch["phase"] == Phase.CANCELLED and patch["reason"] == StopReason.RUN_TIMEOUT
    assert patch["cancellation"]["requestedAt"] == api.fmt_time(deadline)


def test_a_run_requeued_mid_segment_keeps_what_is_left_of_its_budget() -> None:
    deadline = api.now() + dt.timedelta(seconds=4)
    patch = let_go(_held({"deadline": api.fmt_time(deadline)}), "w", "worker w could not go on")
    assert patch["phase"] == Phase.QUEUED and patch["deadline"] is None
    assert 3.0 < patch["budgetRemainingSeconds"] <= 4.0
    # The next claim gets what was left, not a fresh runTimeoutSeconds ...
    claim = api.claimed({"runTimeoutSeconds": 10}, patch, worker="w2", attempt=2, at=T0, generation=1)
    assert api.parse_time(claim["deadline"]) == T0 + dt.timedelta(seconds=patch["budgetRemainingSeconds"])
    assert claim["budgetRemainingSeconds"] is None
    # ... and the operator's re-queue of a lost worker carries it the same way; a wait resets it.
    lost = decide(
        _snap({"phase": "Running", "worker": "w", "deadline": FUTURE}), T0, lambda ns, w: GONE, frozenset({"wf"}), T0
    )
    assert lost.patch is not None and lost.patch["budgetRemainingSeconds"] == 1.0
    assert api.waiting("k", "m", wake_at=None)["budgetRemainingSeconds"] is None
    assert api.woken(Reason.WAIT_OVER, "m", T0, 1)["budgetRemainingSeconds"] is None


def test_requeueing_a_spent_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="budget is spent"):
        api.requeued(Reason.HANDED_BACK, "m", T0, deadline=T0)


def test_a_run_timeouts_requested_at_is_its_deadline_whoever_records_it() -> None:
    # Before: the deadline when the operator wrote Cancelling or the worker ended the run, but
    # "now" when the operator finished a run whose holder was lost past its deadline.
    deadline = T0 - dt.timedelta(seconds=5)
    running = {"phase": "Running", "worker": "w", "deadline": api.fmt_time(deadline)}
    signalled = decide(_snap(running), T0, lambda ns, w: LIVE, frozenset({"wf"}), T0)
    lost = decide(_snap(running), T0, lambda ns, w: GONE, frozenset({"wf"}), T0)
    by_worker = api.stop_record(StopReason.RUN_TIMEOUT, T0, deadline=deadline)
    assert signalled.patch and lost.patch
    assert lost.patch["phase"] == Phase.CANCELLED
    for record in (signalled.patch["cancellation"], lost.patch["cancellation"], by_worker):
        assert record["reason"] == StopReason.RUN_TIMEOUT and record["requestedAt"] == api.fmt_time(deadline)


def test_the_words_are_strings_on_the_wire() -> None:
    import json

    assert json.loads(json.dumps(api.cancelling(STOP, "m", None)))["phase"] == "Cancelling"
    assert Reason.REQUESTED == StopReason.REQUESTED == "Requested"
