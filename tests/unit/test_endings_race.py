"""The driver's endings against what runs beside them, with in-memory stand-ins for the apiserver
(the cluster suite and the soak are the tests of record):

* a cancel learned after the workflow ended, before its ending is written, wins (the chaos soak found
  a run that ended Failed although its cancel had been accepted first);
* an ending neither waits for the run's status checkpoint in flight nor lets one start beside it;
* an archive whose merge fails leaves every archived record listed."""

from __future__ import annotations

import time
from typing import Any

import pytest

from kubestep import _protocol as api
from kubestep._errors import ExecutionCancelled
from kubestep._settings import WorkerSettings
from kubestep._worker.running import Run
from kubestep._workflow import Workflow


class Apiserver:
    def __init__(self) -> None:
        self.writes: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    async def update_status(self, obj: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(patch)
        meta = {**obj["metadata"], "resourceVersion": str(int(obj["metadata"]["resourceVersion"]) + 1)}
        return {**obj, "metadata": meta, "status": {**(obj.get("status") or {}), **patch}}

    async def post_event(self, obj: dict[str, Any], **event: Any) -> None:
        self.events.append(event)


async def _wf(ctx: Any, _: Any) -> None:
    return None


def held(rv: int, cancel: bool) -> dict[str, Any]:
    return {
        "metadata": {"name": "r", "namespace": "ns", "resourceVersion": str(rv), "generation": 1},
        "spec": {"workflow": "wf", "cancelRequested": cancel},
        "status": {"phase": api.Phase.RUNNING, "worker": "w", "attempt": 1},
    }


@pytest.mark.parametrize("ending", ["failed", "completed"])
async def test_a_cancel_seen_on_the_watch_before_the_ending_is_written_wins(ending: str) -> None:
    apiserver = Apiserver()
    run = Run(apiserver, Workflow(_wf, "wf"), held(5, cancel=False), "w", WorkerSettings(module="m"))  # type: ignore[arg-type]
    run.claimed = True
    run.observe(held(6, cancel=True))  # the user's cancel arrives on the watch after the workflow ended
    with pytest.raises(ExecutionCancelled):
        if ending == "failed":
            await run._finish_failed(ValueError("boom"))
        else:
            await run._finish_completed({"ok": True})
    assert apiserver.writes == []  # nothing but the Cancelled ending will be written


async def test_without_a_cancel_the_ending_is_written() -> None:
    apiserver = Apiserver()
    run = Run(apiserver, Workflow(_wf, "wf"), held(5, cancel=False), "w", WorkerSettings(module="m"))  # type: ignore[arg-type]
    run.claimed = True
    await run._finish_failed(ValueError("boom"))
    assert apiserver.writes and apiserver.writes[0]["phase"] == api.Phase.FAILED


async def test_an_ending_does_not_wait_for_a_checkpoint_in_flight() -> None:
    """A checkpoint (its status patch on the busy lane) stuck behind other runs' writes is abandoned
    by the ending, which carries its records: a cancel at 1,300 steps/s met one about once in fifty
    and waited 200-300 ms for it (bench/results/apiserver_profile.md)."""
    import asyncio

    class Busy(Apiserver):
        def __init__(self) -> None:
            super().__init__()
            self.patches = 0

        async def request(self, method: str, path: str, **_: Any) -> Any:
            self.patches += 1
            await asyncio.Event().wait()  # the busy lane never answers

    control, busy = Apiserver(), Busy()
    obj = {**held(5, cancel=False), "metadata": {**held(5, cancel=False)["metadata"], "uid": "u"}}
    run = Run(busy, Workflow(_wf, "wf"), obj, "w", WorkerSettings(module="m"), control=control)  # type: ignore[arg-type]
    run.claimed = True
    run._put({"key": "s1", "kind": "Run", "state": api.StepState.COMPLETED, "output": 1})
    checkpoint = asyncio.ensure_future(run.checkpoint())
    while not busy.patches:
        await asyncio.sleep(0)
    run.observe(held(6, cancel=True))
    await asyncio.wait_for(run._finish_cancelled(), 5)
    assert [w["phase"] for w in control.writes] == [api.Phase.CANCELLED]
    assert [r["key"] for r in control.writes[0]["steps"]] == ["s1"], "the ending carries the checkpoint's records"
    await asyncio.wait_for(checkpoint, 1)  # abandoned quietly: no failure deferred to the run
    assert run._deferred is None


async def test_a_merge_that_fails_leaves_the_chunks_it_would_have_merged_listed() -> None:
    """Archiving writes the records' chunks, then maybe merges old chunks into one. A merge cut
    short (an outage, or a checkpoint an ending preempts) used to leave the new chunks unlisted
    while the ledger counted their records as archived: they would have dropped out of the history."""

    class Store:
        def __init__(self) -> None:
            self.chunks = 0

        async def archive(self, obj: Any, records: list[Any], level: int) -> list[dict[str, Any]]:
            if level > 0:
                raise ConnectionResetError("the apiserver went away mid-merge")
            self.chunks += 1
            return [{"configMap": f"c{self.chunks}", "steps": len(records), "level": 0}]

    run = Run(Apiserver(), Workflow(_wf, "wf"), held(5, cancel=False), "w", WorkerSettings(module="m"))  # type: ignore[arg-type]
    run.store = Store()  # type: ignore[assignment]
    failed = 0
    for i in range(400):
        run._put({"key": f"s{i}", "kind": "Run", "state": api.StepState.COMPLETED, "output": i})
        try:
            await run._archive()
        except ConnectionResetError:
            failed += 1
        ledger = run.ledger
        assert sum(r["steps"] for r in ledger.journal) == ledger.archived, "every archived record is listed"
    assert failed, "the test reached a merge"


async def test_no_checkpoint_starts_while_an_ending_is_written() -> None:
    """A checkpoint started beside the ending would only race it: its patch landing first makes the
    ending's write conflict, re-read and write again, one more round trip on a cancel's path."""
    import asyncio

    class Slow(Apiserver):
        gate = asyncio.Event()

        async def update_status(self, obj: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
            await self.gate.wait()
            return await super().update_status(obj, patch)

    control = Slow()
    obj = {**held(5, cancel=False), "metadata": {**held(5, cancel=False)["metadata"], "uid": "u"}}
    run = Run(Apiserver(), Workflow(_wf, "wf"), obj, "w", WorkerSettings(module="m"), control=control)  # type: ignore[arg-type]
    run.journal = object()  # type: ignore[assignment]  # checkpoints are the step journal's
    run.claimed = True
    run.status_seconds = 0
    run._put({"key": "s1", "kind": "Run", "state": api.StepState.COMPLETED, "output": 1})
    assert run.checkpoint_due(time.monotonic() + 1)
    ending = asyncio.ensure_future(run._finish_completed({"ok": True}))
    await asyncio.sleep(0.01)  # the ending's write is in flight
    assert not run.checkpoint_due(time.monotonic() + 1)
    Slow.gate.set()
    await asyncio.wait_for(ending, 5)


async def test_a_cancel_seen_on_the_watch_before_the_claim_s_answer_is_not_lost() -> None:
    """The claim's answer (rv 6) may arrive after the watch event of a cancel made just after the claim
    landed (rv 7). The answer must not replace the newer object: with the step journal no status write
    of the run would meet the cancel again before the run ended (the chaos soak: a cancel accepted,
    the run ended Completed)."""
    run_box: list[Run] = []

    class Claiming(Apiserver):
        async def update_status(self, obj: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
            answer = held(6, cancel=False)
            run_box[0].observe(held(7, cancel=True))  # the cancel's event, before the claim's answer
            return answer

    queued = held(5, cancel=False)
    queued["status"] = {"phase": api.Phase.QUEUED}
    apiserver = Claiming()
    run = Run(apiserver, Workflow(_wf, "wf"), queued, "w", WorkerSettings(module="m"))  # type: ignore[arg-type]
    run_box.append(run)
    assert await run.claim()
    assert run.rv == "7" and run.stop_reason == api.StopReason.REQUESTED


def _journal_run(status_seconds: float = 5.0) -> Run:
    obj = {**held(5, cancel=False), "metadata": {**held(5, cancel=False)["metadata"], "uid": "u"}}
    run = Run(Apiserver(), Workflow(_wf, "wf"), obj, "w", WorkerSettings(module="m"))  # type: ignore[arg-type]
    run.journal = object()  # type: ignore[assignment]  # checkpoints are the step journal's
    run.claimed = True
    run.status_seconds = status_seconds
    run._put({"key": "s1", "kind": "Run", "state": api.StepState.COMPLETED, "output": 1})
    return run


def test_checkpoints_are_spread_not_in_step() -> None:
    """Runs claimed together must not checkpoint together for ever: each interval is status_seconds
    give or take CHECKPOINT_JITTER, drawn afresh, so a hundred runs' intervals differ."""
    from kubestep._worker.running import CHECKPOINT_JITTER

    runs = [_journal_run() for _ in range(100)]
    factors = {r._status_jitter for r in runs}
    assert len(factors) > 90
    assert all(1 - CHECKPOINT_JITTER <= f <= 1 + CHECKPOINT_JITTER for f in factors)
    run = runs[0]
    start = run._last_status_write
    assert not run.checkpoint_due(start + 5.0 * (1 - CHECKPOINT_JITTER) - 0.01)
    assert run.checkpoint_due(start + 5.0 * (1 + CHECKPOINT_JITTER) + 0.01)


async def test_a_queued_checkpoint_is_not_due_again_and_skips_a_run_that_began_its_ending() -> None:
    run = _journal_run(status_seconds=0)
    later = time.monotonic() + 1
    assert run.checkpoint_due(later)
    run.checkpoint_queued()
    assert not run.checkpoint_due(later), "queued once, not again while it waits for a place"
    run._ending = True  # its ending began while the checkpoint waited: the ending carries the records
    await run.checkpoint()
    assert run._checkpointing is None, "no write started"
    assert not run._checkpoint_queued


async def test_the_worker_writes_at_most_a_few_checkpoints_at_once() -> None:
    """A whole tick's worth of due checkpoints at once was a burst the apiserver chewed through while
    every cancel arriving meanwhile waited (bench/README.md, issue 19)."""
    import asyncio

    from kubestep._worker import worker as w

    class Due:
        in_flight = 0
        most = 0
        done = 0

        def __init__(self) -> None:
            self.queued = False

        def checkpoint_due(self, now: float) -> bool:
            return not self.queued

        def checkpoint_queued(self) -> None:
            self.queued = True

        async def checkpoint(self) -> None:
            Due.in_flight += 1
            Due.most = max(Due.most, Due.in_flight)
            await asyncio.sleep(0.01)
            Due.in_flight -= 1
            Due.done += 1

    worker = w.Worker.__new__(w.Worker)
    worker.journal = object()  # type: ignore[assignment]
    worker.settings = WorkerSettings(module="m")
    worker.runs = {f"r{i}": Due() for i in range(20)}  # type: ignore[misc]
    worker._tasks = set()
    timer = asyncio.ensure_future(worker._checkpoint_forever())
    try:
        for _ in range(300):
            await asyncio.sleep(0.01)
            if Due.done == 20:
                break
    finally:
        timer.cancel()
    assert Due.done == 20, "each due run checkpointed once"
    assert Due.most == w.CHECKPOINTS_AT_ONCE
