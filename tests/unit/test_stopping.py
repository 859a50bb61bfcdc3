"""The worker's stop rules, with the clock passed in: no cluster, no sleeping."""

from __future__ import annotations

from kubestep import _protocol as api
from kubestep._worker.stopping import StopRules


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
