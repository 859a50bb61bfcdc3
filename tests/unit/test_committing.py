"""The worker's group commit (``_worker/committing.py``) over a scripted apiserver: adaptive batching,
retries under the same name, and failures handed to the runs that waited. No cluster."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubestep._errors import ConflictError, InvalidError, TransportError
from kubestep._protocol import batches as b
from kubestep._worker.committing import GroupCommit


class Apiserver:
    """Answers StepBatch creates; ``gate`` holds them in flight; ``fail`` scripts the next answers."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.tries: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: list[BaseException] = []

    async def request(self, method: str, path: str, *, json_body: Any = None, **_: Any) -> Any:
        assert method == "POST" and path == b.batch_path("ns")
        self.tries.append(json_body["metadata"]["name"])
        await self.gate.wait()
        if self.fail:
            raise self.fail.pop(0)
        self.created.append(json_body)
        return json_body


def entries(*lsns: int) -> list[dict[str, Any]]:
    return [{"lsn": n, "record": {"key": f"s{n}", "kind": "Run", "state": "Completed"}} for n in lsns]


def commit_of(server: Apiserver, **kw: Any) -> GroupCommit:
    return GroupCommit(server, "ns", "worker-1", outage_seconds=5, clock=lambda: 1234.5, **kw)  # type: ignore[arg-type]


async def test_a_lone_record_is_written_at_once_and_under_load_one_write_carries_every_run_waiting() -> None:
    server = Apiserver()
    gc = commit_of(server)
    await gc.commit("r0", "u0", 1, entries(1))
    assert len(server.created) == 1, "idle: no timer to wait out"
    server.gate.clear()  # the next write stays in flight...
    first = asyncio.ensure_future(gc.commit("r1", "u1", 1, entries(1)))
    await asyncio.sleep(0.01)
    rest = [asyncio.ensure_future(gc.commit(f"r{i}", f"u{i}", 1, entries(1, 2))) for i in range(2, 7)]
    await asyncio.sleep(0.01)
    assert not any(f.done() for f in [first, *rest]), "nobody goes on before its records are in etcd"
    server.gate.set()
    await asyncio.gather(first, *rest)
    assert len(server.created) == 3, "...while the runs that finished meanwhile queue for the next one"
    last = server.created[-1]
    assert [r["uid"] for r in b.runs_of(last["spec"])] == [f"u{i}" for i in range(2, 7)]
    assert last["metadata"]["labels"][b.LABEL_EPOCH] == str(int(1234.5 // b.EPOCH_SECONDS))
    assert b.members(last["metadata"]["labels"])[0].last_lsn == 2
    await gc.close()


async def test_two_commits_of_one_run_in_one_batch_are_one_entry_in_lsn_order() -> None:
    server = Apiserver()
    gc = commit_of(server)
    server.gate.clear()
    blocker = asyncio.ensure_future(gc.commit("r0", "u0", 1, entries(1)))
    await asyncio.sleep(0.01)
    both = [
        asyncio.ensure_future(gc.commit("r1", "u1", 2, entries(6))),
        asyncio.ensure_future(gc.commit("r1", "u1", 2, entries(5))),
    ]
    await asyncio.sleep(0.01)
    server.gate.set()
    await asyncio.gather(blocker, *both)
    runs = b.runs_of(server.created[-1]["spec"])
    assert len(runs) == 1 and [x["lsn"] for x in runs[0]["entries"]] == [5, 6]
    await gc.close()


async def test_a_transient_failure_is_tried_again_under_the_same_name_and_a_lost_answer_is_success() -> None:
    server = Apiserver()
    gc = commit_of(server)
    already = ConflictError(409, 'stepbatches.kubestep.io "x" already exists', {"reason": "AlreadyExists"})
    server.fail = [TransportError("reset"), already]
    await gc.commit("r", "u", 1, entries(1))
    assert len(set(server.tries)) == 1 and len(server.tries) == 2, server.tries
    await gc.close()


async def test_a_refused_batch_fails_each_run_in_it_and_the_writer_carries_on() -> None:
    server = Apiserver()
    gc = commit_of(server)
    server.fail = [InvalidError(422, "spec.runs: Too many", None)]
    with pytest.raises(InvalidError):
        await gc.commit("r", "u", 1, entries(1))
    await gc.commit("r2", "u2", 1, entries(1))
    assert len(server.created) == 1
    await gc.close()


async def test_a_flush_too_big_for_one_batch_is_cut_into_several() -> None:
    server = Apiserver()
    gc = commit_of(server, max_bytes=400)
    server.gate.clear()
    blocker = asyncio.ensure_future(gc.commit("r0", "u0", 1, entries(1)))
    await asyncio.sleep(0.01)
    many = [asyncio.ensure_future(gc.commit(f"r{i}", f"u{i}", 1, entries(1, 2, 3))) for i in range(1, 5)]
    await asyncio.sleep(0.01)
    server.gate.set()
    await asyncio.gather(blocker, *many)
    assert len(server.created) > 2
    assert sorted(r["uid"] for c in server.created[1:] for r in b.runs_of(c["spec"])) == ["u1", "u2", "u3", "u4"]
    await gc.close()


async def test_a_run_that_stops_waiting_before_the_write_is_left_out_of_it() -> None:
    server = Apiserver()
    gc = commit_of(server)
    server.gate.clear()
    blocker = asyncio.ensure_future(gc.commit("r0", "u0", 1, entries(1)))
    await asyncio.sleep(0.01)
    gone = asyncio.ensure_future(gc.commit("r1", "u1", 1, entries(1)))
    stays = asyncio.ensure_future(gc.commit("r2", "u2", 1, entries(1)))
    await asyncio.sleep(0.01)
    gone.cancel()  # a stop preempted its commit
    server.gate.set()
    await asyncio.gather(blocker, stays)
    assert [r["uid"] for r in b.runs_of(server.created[-1]["spec"])] == ["u2"]
    await gc.close()


async def test_two_attempts_of_one_run_never_share_a_batch() -> None:
    server = Apiserver()
    gc = commit_of(server)
    server.gate.clear()
    blocker = asyncio.ensure_future(gc.commit("r0", "u0", 1, entries(1)))
    await asyncio.sleep(0.01)
    old = asyncio.ensure_future(gc.commit("r1", "u1", 1, entries(4)))
    new = asyncio.ensure_future(gc.commit("r1", "u1", 2, entries(5)))
    await asyncio.sleep(0.01)
    server.gate.set()
    await asyncio.gather(blocker, old, new)
    assert [[r["attempt"] for r in b.runs_of(c["spec"])] for c in server.created[1:]] == [[1], [2]]
    await gc.close()


async def test_a_big_batch_in_flight_does_not_hold_up_the_runs_of_the_other_batches_of_its_flush() -> None:
    class Slow(Apiserver):
        def __init__(self) -> None:
            super().__init__()
            self.big = asyncio.Event()

        async def request(self, method: str, path: str, *, json_body: Any = None, **kw: Any) -> Any:
            if any(r["uid"] == "big" for r in b.runs_of(json_body["spec"])):
                await self.big.wait()
            return await super().request(method, path, json_body=json_body, **kw)

    server = Slow()
    gc = commit_of(server, max_bytes=2000)
    server.gate.clear()
    blocker = asyncio.ensure_future(gc.commit("r0", "u0", 1, entries(1)))
    await asyncio.sleep(0.01)
    large = [{"lsn": 1, "record": {"key": "s1", "kind": "Run", "state": "Completed", "output": "x" * 5000}}]
    big = asyncio.ensure_future(gc.commit("rb", "big", 1, large))
    small = asyncio.ensure_future(gc.commit("rs", "small", 1, entries(1)))
    await asyncio.sleep(0.01)
    server.gate.set()
    await asyncio.wait_for(small, 5)
    assert not big.done(), "the big one is still being written"
    server.big.set()
    await asyncio.gather(blocker, big)
    await gc.close()
