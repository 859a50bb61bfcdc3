"""The worker's stop rules, with the clock passed in: no cluster, no sleeping."""

from __future__ import annotations

import itertools

import pytest

from kubestep import _protocol as api
from kubestep._worker.stopping import StopRules, Verdict, at_boundary


def test_a_cancel_starts_the_grace_period_when_it_is_noted() -> None:
    r = StopRules(grace_seconds=30)
    assert r.check(100.0) is None and r.hard_stop_at is None
    assert r.note(api.StopReason.REQUESTED, 100.0)
    assert r.hard_stop_at == 130.0 and not r.hard_stopped(129.9) and r.hard_stopped(130.0)


def test_a_budget_runs_out_at_its_deadline_not_when_a_boundary_notices() -> None:
    r = StopRules(grace_seconds=10, budget_deadline=50.0)
    assert r.check(49.0) is None
    assert r.check(57.0) == api.StopReason.RUN_TIMEOUT  # a long step: noticed late
    assert r.stopped_at == 50.0 and r.hard_stop_at == 60.0


def test_the_first_reason_wins_in_either_order() -> None:
    r = StopRules(grace_seconds=5, budget_deadline=10.0)
    assert (
        r.note(api.StopReason.REQUESTED, 8.0) and r.check(12.0) == api.StopReason.REQUESTED and r.hard_stop_at == 13.0
    )
    r = StopRules(grace_seconds=5, budget_deadline=10.0)
    assert r.check(11.0) == api.StopReason.RUN_TIMEOUT
    assert (
        not r.note(api.StopReason.REQUESTED, 12.0) and r.reason == api.StopReason.RUN_TIMEOUT and r.hard_stop_at == 15.0
    )


def test_the_grace_period_can_only_shrink() -> None:
    r = StopRules(grace_seconds=30)
    r.note(api.StopReason.REQUESTED, 0.0)
    assert not r.shorten_grace(60) and r.hard_stop_at == 30.0
    assert r.shorten_grace(0) and r.hard_stop_at == 0.0 and r.hard_stopped(0.0)


def test_cancel_requester_takes_the_manager_that_set_the_flag() -> None:
    meta = {
        "managedFields": [
            {"manager": "kubestep-sdk", "time": "2026-11-25T10:00:00Z", "fieldsV1": {"f:spec": {"f:workflow": {}}}},
            {
                "manager": "kubestep-cli",
                "time": "2026-11-25T10:00:05Z",
                "fieldsV1": {"f:spec": {"f:cancelRequested": {}}},
            },
        ]
    }
    assert api.cancel_requester(meta) == {"requestedBy": "kubestep-cli"}
    assert api.cancel_requester({}) == {}


# ----- the rule at a step boundary: cancel, deadline and hand-back in every order ---------------


@pytest.mark.parametrize(
    "events",
    [order for n in range(4) for order in itertools.permutations(["cancel", "deadline", "handback"], n)],
    ids=lambda order: "-".join(order) or "nothing",
)
def test_cancel_deadline_and_hand_back_in_every_order(events: tuple[str, ...]) -> None:
    rules = StopRules(grace_seconds=30, budget_deadline=100.0)
    now, handback = 50.0, False
    for event in events:
        now += 1
        if event == "cancel":
            rules.note(api.StopReason.REQUESTED, now)
        elif event == "deadline":
            now = max(now, 100.0)
        else:
            handback = True
        rules.check(now)  # a boundary in between notes a budget that ran out
    verdict = at_boundary(rules, now, lost=False, handback=handback, hard_stopped=False, in_cleanup=False)
    stops = [e for e in events if e != "handback"]
    if stops:
        # The first stop noted wins, and a shutdown never turns a stop into a hand-back.
        assert verdict is {"cancel": Verdict.CANCELLED, "deadline": Verdict.TIMED_OUT}[stops[0]]
        if stops[0] == "deadline":
            assert rules.stopped_at == 100.0  # the grace period runs from the deadline
    else:
        assert verdict is (Verdict.HAND_BACK if handback else Verdict.GO_ON)
    # A lost run always just unwinds; inside a cleanup scope only the end of the grace period stops.
    assert at_boundary(rules, now, lost=True, handback=handback, hard_stopped=False, in_cleanup=False) is Verdict.LOST
    assert at_boundary(rules, now, lost=False, handback=handback, hard_stopped=False, in_cleanup=True) is Verdict.GO_ON
    hard = at_boundary(rules, now, lost=False, handback=handback, hard_stopped=True, in_cleanup=True)
    assert hard is Verdict.GRACE_EXPIRED
