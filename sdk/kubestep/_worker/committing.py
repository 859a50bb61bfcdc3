"""Group commit: the step records of many runs made durable by one write.

A run that finished a step hands its new records to ``GroupCommit.commit`` and waits. One writer
task takes everything queued and writes it as one StepBatch (several, concurrently, if it would
outgrow ``BATCH_BYTES``), then wakes each run it held records of: only then does that run start
its next step, so a step is durable before the next one starts, as when each step was a status
write. While a write is in flight the next records queue, and the next write starts the moment
this one returns: under load each write carries many runs' records; with one run alone a record
goes at once and pays one write's round trip, as before. There is no timer to wait out.

What a flush writes to is a ``StepStore`` (``_stores.py``): StepBatches by default, rows in Postgres
with ``KUBESTEP_STEP_STORE=postgres`` (one statement per flush). The queue, the packing and the
wake-ups are the same for both; only the write differs.

A write that fails transiently (apiserver or Postgres restarting, 5xx, 429) is tried again, the same
write, for as long as a status write would ride out an outage (``letting_go.Outage``); each store's
write is idempotent (a batch already there under its name, rows already there under their key, is
this very write, whose first answer was lost). Any other failure, or an outage longer than that, is
handed to each waiting run, which lets go of its run as after a failed status write.

The rules for what a batch holds and which of its records count: ``_protocol/batches.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

from .._kube import Kube
from .._metrics import BATCH_RECORDS, BATCH_WRITE_SECONDS
from .._stores import KubeStore, StepStore
from .letting_go import Outage

BATCH_BYTES = 256 * 1024  # a batch well under etcd's 1.5 MiB request limit, so one slow write stays short


@dataclasses.dataclass
class _Waiter:
    name: str
    uid: str
    attempt: int
    entries: list[dict[str, Any]]  # [{lsn, record}]
    size: int
    done: asyncio.Future[None]


def _pack(waiters: list[_Waiter], limit: int) -> list[list[_Waiter]]:
    """Waiters in order, cut into groups of at most ``limit`` bytes (a bigger one goes alone), and
    never two attempts of one run in a group: a batch's label for a run names one attempt
    (``batches.members``), which the collector's rule reads."""
    out: list[list[_Waiter]] = []
    group: list[_Waiter] = []
    attempts: dict[str, int] = {}
    size = 0
    for w in waiters:
        if group and (size + w.size > limit or attempts.get(w.uid, w.attempt) != w.attempt):
            out.append(group)
            group, size, attempts = [], 0, {}
        group.append(w)
        attempts[w.uid] = w.attempt
        size += w.size
    if group:
        out.append(group)
    return out


def _runs(group: list[_Waiter]) -> list[dict[str, Any]]:
    """One entry per run (concurrent steps of one run may have queued twice), entries in lsn order."""
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    for w in group:
        run = runs.setdefault((w.uid, w.attempt), {"name": w.name, "uid": w.uid, "attempt": w.attempt, "entries": []})
        run["entries"] += w.entries
    for run in runs.values():
        run["entries"].sort(key=lambda e: e["lsn"])
    return list(runs.values())


class GroupCommit:
    """The one writer of a worker's step records in ``namespace``: StepBatches, or ``store``'s."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        worker: str,
        *,
        outage_seconds: float,
        max_bytes: int = BATCH_BYTES,
        clock: Callable[[], float] = time.time,
        store: StepStore | None = None,
    ) -> None:
        self.namespace = namespace
        self.outage_seconds = outage_seconds
        self.max_bytes = max_bytes
        self.store: StepStore = store if store is not None else KubeStore(kube, namespace, worker, clock)
        self._queue: list[_Waiter] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.writes = 0

    async def commit(self, name: str, uid: str, attempt: int, entries: list[dict[str, Any]]) -> None:
        """Returns once ``entries`` (``[{lsn, record}]`` of one run) are in the store; raises what the
        write raised if they could not be."""
        if not entries:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"group-commit:{self.namespace}")
        size = 64
        for e in entries:
            text = json.dumps(e, separators=(",", ":"))
            size += len(text) + text.count('"') + text.count("\\")  # escaped again in runsJSON
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiter(name, uid, attempt, entries, size, done))
        self._wake.set()
        await done

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    taken, self._queue = self._queue, []
                    await self._flush(taken)
        except asyncio.CancelledError:
            for w in self._queue:
                if not w.done.done():
                    w.done.cancel()
            raise

    async def _flush(self, taken: list[_Waiter]) -> None:
        live = [w for w in taken if not w.done.done()]  # a waiter cancelled meanwhile (a stop) is dropped
        await asyncio.gather(*(self._write_and_wake(g) for g in _pack(live, self.max_bytes)))

    async def _write_and_wake(self, group: list[_Waiter]) -> None:
        """Each group's runs go on as soon as their own batch is in: a big one (a step that returned
        a large output goes alone) does not hold up the runs of the other batches of its flush."""
        try:
            await self._write(group)
            error: BaseException | None = None
        except Exception as exc:
            error = exc
        for w in group:
            if w.done.done():
                continue
            if error is not None:
                w.done.set_exception(error)
            else:
                w.done.set_result(None)

    async def _write(self, group: list[_Waiter]) -> None:
        write = self.store.prepare(_runs(group))  # once: its retries are the same write
        BATCH_RECORDS.observe(sum(len(w.entries) for w in group))
        with BATCH_WRITE_SECONDS.time():
            await Outage(self.outage_seconds).retrying(write)
        self.writes += 1
