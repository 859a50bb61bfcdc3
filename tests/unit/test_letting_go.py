"""What a worker writes when it lets go of a run it cannot finish: pure logic."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubestep import _protocol as api
from kubestep._errors import ApiError, ConflictError, TooLargeError, TransportError
from kubestep._worker.letting_go import Outage, let_go, transient
from kubestep._worker.unwinding import Release


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


# ----- riding out an outage, or not -----------------------------------------------------------


def test_what_is_worth_another_attempt() -> None:
    assert transient(TransportError("refused")) and transient(ApiError(503, "starting", None))
    assert transient(ApiError(429, "slow down", None)) and transient(ConflictError(409, "changed", None))
    assert not transient(TooLargeError(500, "etcdserver: request is too large", None))
    assert not transient(ApiError(422, "invalid", None))
    assert transient(Release("x", held=True, cause=TransportError("refused")))
    assert not transient(Release("x", held=True, cause=TooLargeError(413, "too large", None)))


async def test_an_outage_is_ridden_out_for_one_lease_then_given_up() -> None:
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TransportError("connection refused")

    await Outage(seconds=5).retrying(flaky)
    assert calls == 3
    outage = Outage(seconds=0.25)
    with pytest.raises(TransportError):
        while True:
            await outage.wait_out(TransportError("still down"))
    with pytest.raises(TooLargeError):  # never retried: replay would only repeat it
        await Outage(seconds=5).wait_out(TooLargeError(500, "request is too large", None))
    await asyncio.sleep(0)
