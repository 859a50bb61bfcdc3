"""What a worker writes when it lets go of a run it cannot finish: pure logic."""

from __future__ import annotations

from typing import Any

from kubestep import _protocol as api
from kubestep._worker.running import let_go


def obj(status: dict[str, Any], cancel: bool = False) -> dict[str, Any]:
    return {
        "metadata": {"name": "r", "generation": 3},
        "spec": {"workflow": "wf", "cancelRequested": cancel},
        "status": {"phase": api.Phase.RUNNING, "worker": "w", **status},
    }


def test_a_run_nobody_stopped_is_requeued_for_replay() -> None:
    patch = let_go(obj({}), "w", "worker w restarted")
    assert patch["phase"] == api.Phase.QUEUED and patch["worker"] is None and patch["deadline"] is None
    assert "replay" in patch["message"]


def test_a_run_being_stopped_ends_cancelled_with_its_reason_acknowledged() -> None:
    canc = {"reason": api.StopReason.RUN_TIMEOUT, "requestedAt": "2026-11-25T12:00:00.000000Z"}
    patch = let_go(obj({"cancellation": canc}), "w", "worker w restarted")
    assert patch["phase"] == api.Phase.CANCELLED and patch["reason"] == api.StopReason.RUN_TIMEOUT
    assert patch["cancellation"]["requestedAt"] == canc["requestedAt"]
    assert patch["cancellation"]["acknowledgedBy"] == "w"
    assert any(c["type"] == api.ConditionType.FINISHED and c["status"] == "True" for c in patch["conditions"])


def test_the_users_cancel_wins_even_before_the_operator_wrote_it() -> None:
    patch = let_go(obj({}, cancel=True), "w", "worker w could not go on", {"type": "X", "message": "m"})
    assert patch["phase"] == api.Phase.CANCELLED and patch["cancellation"]["reason"] == api.StopReason.REQUESTED


def test_an_error_replay_would_repeat_fails_the_run_with_it() -> None:
    failure = {"type": "TooLargeError", "message": "too large"}
    patch = let_go(obj({}), "w", "worker w could not go on", failure)
    assert patch["phase"] == api.Phase.FAILED and patch["reason"] == "WorkerError"
    assert patch["error"] == failure and "too large" in patch["message"]
