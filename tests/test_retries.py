"""Step retries on the real control plane: the worker records each attempt, every backoff is a
durable wait the operator wakes, a resumed run continues the schedule, and nothing is retried after
a stop (``sdk/kubestep/_retry.py``; the rules alone: ``tests/unit/test_retries.py``)."""

from __future__ import annotations

from typing import Any

from kubestep import KubestepClient
from kubestep import _protocol as api

from .harness import until_phase


def _rows(history: list[Any]) -> list[tuple[str, str, int | None]]:
    return [(s.key, s.state, s.attempt) for s in history]


async def test_a_failing_step_is_retried_after_durable_backoffs_until_it_succeeds(
    client: KubestepClient, workers: Any
) -> None:
    workers()
    h = await client.start("retrying", {"succeed_in": 3, "attempts": 3, "interval": 0.5})
    e = await h.wait(timeout=60)
    assert e.status.phase == api.Phase.COMPLETED, e.status
    history = await client.step_history(h.id)
    assert _rows(history) == [
        ("flaky", "Failed", 1),
        ("flaky~backoff-1", "Completed", None),
        ("flaky~attempt-2", "Failed", 2),
        ("flaky~backoff-2", "Completed", None),
        ("flaky~attempt-3", "Completed", 3),
        ("after", "Completed", None),
    ]
    by_key = {s.key: s for s in history}
    assert by_key["flaky"].error and "segment 1 failed" in by_key["flaky"].error["message"]
    # Each attempt started no earlier than the previous one's recorded retryAt: the schedule held.
    for before, after in (("flaky", "flaky~attempt-2"), ("flaky~attempt-2", "flaky~attempt-3")):
        due, started = by_key[before].retry_at, by_key[after].started_at
        assert due is not None and started is not None and started >= due, (before, due, started)
    assert by_key["flaky~attempt-3"].retry_at is None
    # One running segment per attempt: each backoff freed the worker and the operator woke the run.
    assert e.status.attempt == 3


async def test_a_cancel_during_a_backoff_ends_the_run_at_once_with_no_further_attempt(
    client: KubestepClient, workers: Any
) -> None:
    workers()
    h = await client.start("retrying", {"succeed_in": 9, "attempts": 5, "interval": 60})
    e = await until_phase(client, h.id, api.Phase.WAITING, timeout=30)
    assert (e.status.waiting_for or {}).get("key") == "flaky~backoff-1", e.status.waiting_for
    await client.cancel_execution(h.id, reason="stop retrying")
    e = await h.wait(timeout=15)
    assert (e.status.phase, e.status.reason) == (api.Phase.CANCELLED, api.StopReason.REQUESTED)
    keys = [s.key for s in await client.step_history(h.id)]
    assert "flaky~attempt-2" not in keys and keys[0] == "flaky"


async def test_backoffs_do_not_count_toward_the_budget_and_a_stop_ends_the_schedule(
    client: KubestepClient, workers: Any
) -> None:
    workers()
    # Three attempts of 1.2 s each: 3.6 s of running time in all, over a 2 s budget; but each backoff
    # is a wait, after which the budget starts afresh, so no segment runs out.
    h = await client.start(
        "retrying", {"succeed_in": 3, "attempts": 3, "interval": 0.5, "seconds": 1.2}, run_timeout_seconds=2
    )
    e = await h.wait(timeout=60)
    assert e.status.phase == api.Phase.COMPLETED, e.status
    # One attempt longer than the budget: the run times out while it runs; the attempt finishes
    # (failed) and is recorded, and its failure is final: a retry never outlives a stop.
    h = await client.start(
        "retrying", {"succeed_in": 3, "attempts": 3, "interval": 0.5, "seconds": 2.5}, run_timeout_seconds=1
    )
    e = await h.wait(timeout=60)
    assert (e.status.phase, e.status.reason) == (api.Phase.CANCELLED, api.StopReason.RUN_TIMEOUT), e.status
    history = await client.step_history(h.id)
    assert _rows(history) == [("flaky", "Failed", 1)]
    assert history[0].retry_at is None
