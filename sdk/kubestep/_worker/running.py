"""One execution held by this worker: claim, replay, step records, final status.

Every status write here is conditional on the resourceVersion this worker
last saw, and re-checks after a conflict that the run is still held by this
worker (``status.worker``) in a held phase. That is what keeps two workers
from both executing a run, and a worker that lost its run (the operator
re-queued it after the worker's lease expired) from writing over its new
holder.

Step boundaries are where a run stops: before and after every
``ctx.step.run``, at ``ctx.step.wait_for`` and when the workflow returns.
There the run checks, in order: lost, cancelled (operator's
``status.cancellation``), its own clock against the run budget, and a
hand-back request (SIGTERM). A step in flight is not interrupted by the
stop itself: it gets the grace period (``stopping.py``) to finish, and
the workflow's cleanup (``ctx.cleanup()``) runs within the same period.
When the period is over the worker interrupts whatever still runs: an
async step is cancelled at its current await, a synchronous step's thread
is abandoned (Python cannot kill a thread, so the worker then restarts
itself, ``Worker.on_abandoned``), and the run ends Cancelled with reason
GracePeriodExpired. A step's own ``timeout`` interrupts it the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from .. import _protocol as api
from .._context import ChildCall, Stop, WorkflowContext
from .._errors import (
    ChildLimitError,
    ConflictError,
    EventTimeoutError,
    ExecutionCancelled,
    GracePeriodExpired,
    InvalidError,
    NotFoundError,
    ReplayMismatch,
    RunTimedOut,
    StepTimeoutError,
    StopExecution,
    TooLargeError,
    WorkflowDefinitionError,
    lost_race,
)
from .._kube import Kube, background
from .._metrics import STATUS_WRITE_SECONDS, STEP_SECONDS, STEPS
from .._protocol import batches
from .._retry import Decide, RetryScheduled
from .._settings import WorkerSettings
from .._stores import KubeStore, StepStore
from .._workflow import Workflow
from . import endings, stepping
from .committing import GroupCommit
from .ledger import Ledger
from .letting_go import Outage, error_record, let_go, to_json, transient
from .stepping import SETTLE_SECONDS, StepCall
from .stopping import StopRules, Verdict, at_boundary
from .unwinding import CONTENDED, Release, Suspend

logger = logging.getLogger("kubestep.worker")

# With the step journal, a cancel's ending archives the records status does not hold yet only past this
# size (the other endings always do). Below it, writing them into status is quicker than a ConfigMap
# first; above it, slower: the apiserver walks every field of every record in a custom resource against
# its schema, and a string in a ConfigMap not at all. Measured on an idle plane (2026-12-03): 50 records
# (13 KB) 24 ms into status against 19 ms archived first; 200 (54 KB) 60 against 31; 500 (134 KB) 161
# against 44. Under load the archive costs more (a ConfigMap create on the busy lane beside the step
# batches): at 12 KB, which most cancels at 1,500 steps/s pass, cancel p99 there rose to 522 ms. 64 KB
# (~250 records) leaves those cancels alone and still archives the long tails of fast lone runs (20 such
# runs timing out together took 1.1 s to be seen ended at 256 KB).
END_ARCHIVE_BYTES = 64 * 1024
CHILD_CREATES = 16  # children created at once by one batch_invoke
# A run's status checkpoints come every status_seconds give or take this share, drawn afresh each time.
# Runs claimed together (a fan-out, a benchmark's 100) would otherwise checkpoint together for ever: a
# burst of ConfigMap creates and status patches that every cancel landing in it waits behind.
CHECKPOINT_JITTER = 0.2


def _jitter() -> float:
    """A factor of status_seconds: the next checkpoint's interval."""
    return 1.0 + CHECKPOINT_JITTER * (2.0 * random.random() - 1.0)


def _retry_at(delay: float | None) -> dict[str, Any]:
    """The field a failed attempt that is retried records: when the next attempt is due."""
    return {} if delay is None else {"retryAt": api.fmt_time(api.later(api.now(), delay))}


def _rv(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["resourceVersion"])


def _newer(candidate: str, current: str) -> bool:
    # resourceVersions are opaque by contract; etcd's are integers. Comparing
    # them only saves a round trip: correctness rests on the preconditions.
    try:
        return int(candidate) > int(current)
    except ValueError:
        return candidate != current


class Run:
    """The worker-side state of one execution while this worker holds it."""

    def __init__(
        self,
        kube: Kube,
        workflow: Workflow,
        obj: dict[str, Any],
        worker: str,
        settings: WorkerSettings,
        control: Kube | None = None,
        journal: GroupCommit | None = None,
    ) -> None:
        self.kube = kube  # step records and the journal: the busy lane
        # The step journal (group commit into StepBatches or Postgres rows), or None: every step a
        # status write.
        self.journal = journal
        # Where records are read back at a claim and archived chunks go (``_stores.py``).
        self.store: StepStore = journal.store if journal is not None else KubeStore(kube)
        # Claims and endings (a cancel's Cancelled write above all) on connections of their own,
        # so they never wait behind other runs' step writes in the pool.
        self.control = control or kube
        self.workflow = workflow
        self.worker = worker
        self.obj = obj
        self.name: str = obj["metadata"]["name"]
        self.namespace: str = obj["metadata"]["namespace"]
        self.rv = _rv(obj)
        status = obj.get("status") or {}
        self.ledger = Ledger(status, settings.status_steps, journaling=journal is not None)  # ledger.py
        self.attempt: int = int(status.get("attempt") or 0)
        self.rules = StopRules(api.grace_seconds(obj.get("spec") or {}, settings.grace_seconds))
        self.handback = False
        self.lost = False
        self.claimed = False
        self.hard_stopped = False  # the grace period ran out: whatever still runs is interrupted
        self.interrupted: list[str] = []  # keys of steps cut off by the hard stop
        self.on_abandoned: Callable[[str], None] | None = None  # the worker restarts itself (Worker)
        self._workflow_task: asyncio.Task[Any] | None = None
        self._hard_timer: asyncio.TimerHandle | None = None
        self._budget_timer: asyncio.TimerHandle | None = None
        self._cleanup_depth = 0  # inside ctx.cleanup(): steps may run although the run is stopping
        self._stop_noted = asyncio.Event()
        self._noticed: dt.datetime | None = None  # when this worker learned of a user's cancel
        self._seen: set[str] = set()
        self.checkpoint_seconds = settings.checkpoint_seconds
        self.lease_seconds = settings.lease_seconds
        self.cancel_audit = settings.cancel_audit
        # How long a write rides out an unreachable or restarting apiserver before letting go. Nobody
        # can take the run while the apiserver is down, and once it answers a guarded write either
        # lands or is refused; the operator gives holders a lease after it sees again (blind_until).
        self._outage_seconds = max(3.0 * settings.lease_seconds, 30.0)
        self._last_checkpoint = time.monotonic()
        # With the step journal: how often status catches up with the records while the run runs
        # (kubectl's view, and what lets the operator collect the batches), and a failure of that
        # write in the background, raised at the next boundary.
        self.status_seconds = settings.status_seconds
        self._last_status_write = time.monotonic()
        self._status_jitter = _jitter()
        self._checkpoint_queued = False
        self._deferred: Release | None = None
        # The checkpoint in flight, which an ending preempts (``_preempt_checkpoint``).
        self._checkpointing: asyncio.Future[None] | None = None
        self._checkpoint_preempted = False
        self._ending = False  # a phase change is being written: no checkpoint starts beside it
        self._ended = False
        self._last_key: str | None = None
        self._path = api.execution_path(self.namespace, self.name)
        # Steps of one run may run concurrently (asyncio.gather): their appends
        # must not both start from the same flushed prefix.
        self._append_lock = asyncio.Lock()

    # ----- watch input ------------------------------------------------------------------------

    def observe(self, obj: dict[str, Any]) -> None:
        """A watch event for this run: learn of cancellation, or of having lost the run."""
        if not _newer(_rv(obj), self.rv):
            return  # older than what we wrote or read last
        self.obj, self.rv = obj, _rv(obj)
        if self.claimed:  # before the claim, a newer Queued version is just what we will claim
            self._learn(obj)

    def observe_deleted(self) -> None:
        self.lost = True

    def _learn(self, obj: dict[str, Any]) -> None:
        status = obj.get("status") or {}
        if status.get("worker") != self.worker or status.get("phase") not in api.HELD_PHASES:
            self.lost = True
        self._note_stop(obj)

    def _note_stop(self, obj: dict[str, Any]) -> None:
        status, spec = obj.get("status") or {}, obj.get("spec") or {}
        if spec.get("cancelGracePeriodSeconds") is not None and self.rules.shorten_grace(
            float(spec["cancelGracePeriodSeconds"])
        ):
            self._arm_hard_stop()  # the user shortened the grace period (0: stop now)
        reason = (status.get("cancellation") or {}).get("reason")
        if reason is None and spec.get("cancelRequested"):
            # The user's request is irrevocable (a CEL rule forbids undoing it),
            # so the holder may act on it at once; the operator's Cancelling
            # write says the same a moment later. This keeps the operator's
            # hop off the cancel path.
            reason = api.StopReason.REQUESTED
        if reason:
            self._stop(reason, time.monotonic())

    # ----- stopping: the rules are in stopping.py; here, the timers that enforce them ---------

    @property
    def stop_reason(self) -> str | None:
        return self.rules.reason

    @property
    def workflow_id(self) -> str:
        return self.workflow.id

    def stop_info(self) -> Stop | None:
        """``ctx.stop``: why the run is stopping, for its cleanup code."""
        self._stopping()
        reason = self.rules.reason
        if reason is None:
            return None
        note = api.cancel_note(self.obj, self.cancel_audit) if reason == api.StopReason.REQUESTED else {}
        return Stop(
            reason, self.hard_stopped, note.get("message"), note.get("requestedByUser") or note.get("requestedBy")
        )

    def _stop(self, reason: str, at: float) -> None:
        if self.rules.note(reason, at):
            self._noticed = api.now()
            logger.debug("run %s: stop noted (%s)", self.name, reason)
            self._arm_hard_stop()

    def _budget_out(self) -> None:
        """The budget's own timer: a step in flight past the deadline starts the grace period."""
        if self.rules.check(time.monotonic()) is not None:
            self._arm_hard_stop()

    def _arm_hard_stop(self) -> None:
        if self.rules.reason is not None:
            self._stop_noted.set()
        at = self.rules.hard_stop_at
        if at is None or not self.claimed:
            return
        if self._hard_timer is not None:
            self._hard_timer.cancel()
        self._hard_timer = asyncio.get_running_loop().call_at(at, self._hard_stop)

    def _hard_stop(self) -> None:
        """The grace period is over: interrupt the workflow wherever it is awaiting."""
        if self.hard_stopped or self._workflow_task is None or self._workflow_task.done():
            return
        logger.warning("run %s: grace period of %g s over; interrupting it", self.name, self.rules.grace_seconds)
        self.hard_stopped = True
        self._workflow_task.cancel()

    def _disarm(self) -> None:
        for timer in (self._hard_timer, self._budget_timer):
            if timer is not None:
                timer.cancel()

    def _abandoned(self, what: str) -> None:
        logger.error("run %s: %s did not stop when interrupted; abandoning it", self.name, what)
        if self.on_abandoned is not None:
            self.on_abandoned(f"{what} of run {self.name} did not stop when interrupted")

    # ----- status writes ----------------------------------------------------------------------

    async def _write(self, build: Callable[[dict[str, Any]], dict[str, Any]], stoppable: bool = False) -> None:
        """Conditional status patch, rebuilt and retried after conflicts while we still hold the run.

        ``stoppable`` writes (every ending but Cancelled) give way to a
        cancellation learned from the conflict: they raise at that boundary.

        Every step a status write: no archiving here (a journal chunk is written on the busy lane,
        behind other runs' step data, and an ending, a cancel's above all, must not wait for it;
        status holds the few extra records); the lock only waits out an archive in progress. With
        the step journal, see below.
        """
        self._ending = True
        await self._preempt_checkpoint()
        async with self._append_lock:
            if self.journal is not None and (stoppable or self._unarchived_bytes() > END_ARCHIVE_BYTES):
                # With the step journal, status last caught up seconds ago: the records since can be
                # many, so the ending archives first (as a checkpoint would) to keep status small. A
                # cancel's ending does only when they are big: it must not wait for a ConfigMap.
                await Outage(self._outage_seconds).retrying(self._archive)
        outage = Outage(self._outage_seconds)
        conflicts = 0
        while conflicts < 10:
            if stoppable and self.stop_reason == api.StopReason.REQUESTED:
                # A cancel learned since the workflow ended (from the watch, while this write waited
                # out an outage, say) wins over the ending, as one learned from a conflict does: the
                # chaos soak found a cancel accepted before the run ended Failed. (A budget that runs
                # out while a finished run's ending is being written does not undo the finish.)
                self._check_stop()
            try:
                t0 = time.monotonic()
                with STATUS_WRITE_SECONDS.labels("end").time():
                    obj = await self.control.update_status(self.obj, build(self.obj.get("status") or {}))
                logger.debug(
                    "run %s: ending written in %.1f ms after %d conflicts (%d step records in status)",
                    self.name,
                    (time.monotonic() - t0) * 1000,
                    conflicts,
                    len((obj.get("status") or {}).get("steps") or []),
                )
                self.obj, self.rv = obj, _rv(obj)
                self.ledger.written()
                self._last_status_write = time.monotonic()
                return
            except ConflictError:
                conflicts += 1
                await outage.retrying(self._reread)
                if stoppable and self.stop_reason is not None:
                    self._check_stop()
            except Exception as exc:
                await outage.wait_out(exc)
        raise Release(CONTENDED, held=True)

    def _unarchived_bytes(self) -> int:
        ledger = self.ledger
        return sum(len(json.dumps(r, separators=(",", ":"))) for r in ledger.records[ledger.archived :])

    async def _reread(self) -> None:
        """After a lost write race: the current object, and whether the run is still ours."""
        try:
            fresh = await self.kube.get(self._path)
        except NotFoundError:
            raise Release("deleted") from None
        self.obj, self.rv = fresh, _rv(fresh)
        self._learn(fresh)
        if self.lost:
            raise Release("lost") from None

    def _event(self, reason: str, message: str, warning: bool = False) -> None:
        background(
            self.kube.post_event(
                self.obj,
                type_="Warning" if warning else "Normal",
                reason=reason,
                message=message,
                component="kubestep-worker",
                instance=self.worker,
            )
        )

    def _steps_patch(self) -> dict[str, Any]:
        return self.ledger.status_fields()

    # ----- claim ------------------------------------------------------------------------------

    async def claim(self) -> bool:
        """Queued → Running, conditional on the resourceVersion we saw Queued. False if we lost the race.

        A conflict only means the run changed since we saw it (often the
        operator updating a condition): re-read, and claim again while it is
        still Queued.
        """
        for _ in range(5):
            try:
                return await self._claim_once()
            except ConflictError:
                try:
                    fresh = await self.kube.get(self._path)
                except NotFoundError:
                    return False
                self.obj, self.rv = fresh, _rv(fresh)
        return False

    async def _claim_once(self) -> bool:
        spec, status = self.obj.get("spec") or {}, self.obj.get("status") or {}
        if status.get("phase") != api.Phase.QUEUED or spec.get("cancelRequested"):
            return False
        # Records an earlier holder made durable in the step store (StepBatches, Postgres) but not yet
        # in status: read before the claim, which fixes how far each earlier attempt's records count
        # (batches.py: fencing). Read through an outage of the store: nothing is claimed yet.
        newer: list[batches.Entry] = []
        prior = int(status.get("attempt") or 0)
        if prior > 0:
            found: list[batches.Entry] = []

            async def read() -> None:
                found[:] = await self.store.entries(self.namespace, self.obj["metadata"]["uid"])

            await Outage(self._outage_seconds).retrying(read)
            newer = batches.counted(status, found, open_attempt=prior)
        wall, mono = api.now(), time.monotonic()
        budget = api.segment_budget(spec, status)
        patch = api.claimed(
            spec,
            status,
            worker=self.worker,
            attempt=self.attempt + 1,
            at=wall,
            generation=self.obj["metadata"].get("generation"),
        )
        # Whose batches count for this attempt (batches.counted): this worker's, as admission
        # holds a batch's spec.worker to its writer's pod. journalReader: this claimant reads
        # spec.runsJSON, so an older worker may not claim the run after it (the CRD's guard).
        patch = {**patch, "journalHolder": self.worker, "journalReader": self.worker}
        if newer or status.get("journalFences"):
            patch["journalFences"] = batches.fences_at_claim(status, newer)
        try:
            with STATUS_WRITE_SECONDS.labels("claim").time():
                obj = await self.control.update_status(self.obj, patch)
        except NotFoundError:
            return False
        except Exception as exc:
            if transient(exc) and not isinstance(exc, ConflictError):
                # The claim may have been applied with its answer lost: act as if it was,
                # so the caller lets go of the run (a no-op if it is not ours).
                self.claimed, self.attempt = True, self.attempt + 1
            raise
        # A watch event newer than the claim's answer may have arrived while the claim was in flight
        # (``observe`` keeps it, but learns nothing before the claim): keep the newer of the two, never
        # step back to the answer, and learn from it. The chaos soak lost a cancel this way: the cancel's
        # event came in before the claim's answer, which then replaced it, and with the step journal no
        # status write of the run met the cancel before the run ended.
        if _newer(_rv(obj), self.rv):
            self.obj, self.rv = obj, _rv(obj)
        self.claimed = True
        self.attempt += 1
        if budget is not None:
            self.rules.budget_deadline = mono + budget
            self._budget_timer = asyncio.get_running_loop().call_at(mono + budget, self._budget_out)
        self._learn(self.obj)  # a cancel that arrived with the claim's answer, or before it
        verb = str(patch["reason"])
        self._event(verb, f"{verb} on worker {self.worker} (attempt {self.attempt})")
        # Replay needs the whole history: the archived records, then status.steps.
        status = obj.get("status") or {}
        archived = await self.store.load(self.namespace, list(status.get("journal") or []), obj["metadata"].get("uid"))
        self.ledger.load(archived, status, newer)
        self._last_status_write = time.monotonic()
        return True

    # ----- boundaries and steps (called through WorkflowContext) ------------------------------

    def _stopping(self) -> bool:
        if self.rules.reason is None and self.rules.check(time.monotonic()) is not None:
            self._arm_hard_stop()
        return self.lost or self.stop_reason is not None or self.handback

    def _verdict(self, in_cleanup: bool) -> Verdict:
        noted = self.rules.reason is not None
        verdict = at_boundary(
            self.rules,
            time.monotonic(),
            lost=self.lost,
            handback=self.handback,
            hard_stopped=self.hard_stopped,
            in_cleanup=in_cleanup,
        )
        if not noted and self.rules.reason is not None:
            self._arm_hard_stop()  # the budget ran out: its grace period runs from the deadline
        return verdict

    def _raise_for(self, verdict: Verdict) -> None:
        if verdict is Verdict.LOST:
            raise Release("lost")
        if verdict is Verdict.GRACE_EXPIRED:
            raise GracePeriodExpired(
                f"execution {self.name}: the grace period of {self.rules.grace_seconds:g} s is over"
            )
        if verdict is Verdict.CANCELLED:
            raise ExecutionCancelled(f"execution {self.name} was cancelled")
        if verdict is Verdict.TIMED_OUT:
            raise RunTimedOut(f"execution {self.name} exceeded its run timeout")
        if verdict is Verdict.HAND_BACK:
            raise Release("handback")

    def _check_stop(self) -> None:
        """Raises if the run must stop: lost, cancelled or out of budget (not for hand-back)."""
        verdict = self._verdict(in_cleanup=False)
        if verdict is not Verdict.HAND_BACK:
            self._raise_for(verdict)

    def _boundary(self) -> None:
        """A step boundary (``stopping.at_boundary``): stop, or hand the run back if the worker is
        shutting down. Inside a cleanup scope only a lost run or the end of the grace period stops
        the workflow."""
        if self._deferred is not None:
            raise self._deferred
        self._raise_for(self._verdict(in_cleanup=bool(self._cleanup_depth)))

    @contextlib.asynccontextmanager
    async def cleanup(self) -> AsyncIterator[None]:
        """Steps in this scope run although the run is stopping, within the grace period."""
        self._cleanup_depth += 1
        try:
            yield
        finally:
            self._cleanup_depth -= 1

    async def _recorded(self, key: str, kind: str) -> dict[str, Any] | None:
        """The record replay hands to this call, or None for a new step. Never a record of another
        step: a new step may start only once every recorded one is reached again (``Ledger``)."""
        if key in self._seen:
            raise WorkflowDefinitionError(f"step key {key!r} is used twice in one execution")
        self._seen.add(key)
        verb = api.replay.VERBS[kind]
        rec = self.ledger.lookup(key, kind, f"{verb} {key!r}")
        if rec is None:
            await api.replay.before_new_step(self.ledger.replay, f"{verb} {key!r}")
        return rec

    def _put(self, rec: dict[str, Any]) -> None:
        self.ledger.put(rec)

    async def _archive(self) -> None:
        """Moves the oldest final records into journal chunks (``Ledger.to_archive``: ConfigMaps, or
        rows with the Postgres store); the next status write lists them and drops them from status.steps."""
        span = self.ledger.to_archive()
        if span is None:
            return
        start, end = span
        ledger = self.ledger
        # Move the boundary first: a concurrent step that puts a record of one of these
        # keys while the ConfigMaps are written must append it, not change the copy.
        ledger.archived = end
        try:
            refs = ledger.journal + await self.store.archive(self.obj, ledger.archived_records(start, end), 0)
        except BaseException:
            ledger.archived = start
            raise
        # The chunks are written: list them at once, so that a merge that fails or is cut short
        # (an outage, a preempted checkpoint) leaves these records listed, not dropped.
        ledger.journal = refs
        ledger.freeze(start, end)
        # Keep status.journal short however long the run: merge the oldest run of FANOUT chunks
        # of a level into fewer of the next, where that pays (Ledger.merge_span).
        merge = ledger.merge_span(refs)
        if merge is not None:
            first, last, level, a, b = merge
            merged = await self.store.archive(self.obj, ledger.archived_records(a, b), level + 1)
            ledger.journal = refs[:first] + merged + refs[last:]

    async def run_step(
        self,
        key: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None = None,
        attempt: int | None = None,
        retry: Decide | None = None,
    ) -> Any:
        self._boundary()
        rec = await self._recorded(key, "Run")
        if rec is not None and rec["state"] == api.StepState.COMPLETED:
            self._last_key = key
            STEPS.labels(self.workflow.id, "Replayed").inc()
            return rec.get("output")  # replay: never run a completed step twice
        if rec is not None and rec.get("retryAt") and rec["state"] in (api.StepState.FAILED, api.StepState.INTERRUPTED):
            # A failed attempt whose retry was decided and recorded: the schedule goes on from it.
            self._last_key = key
            due = api.parse_time(rec["retryAt"])
            raise RetryScheduled(0 if due is None else (due - api.now()).total_seconds())
        started = api.now()
        t0 = time.monotonic()
        cleanup: dict[str, Any] = {"cleanup": True} if self._cleanup_depth and self.stop_reason else {}
        if attempt is not None:
            cleanup["attempt"] = attempt
        call = StepCall(fn, args, kwargs)
        try:
            finished = await call.finished(timeout)
        except asyncio.CancelledError:
            if not self.hard_stopped:
                call.cancel()
                raise  # not ours (the worker itself is being torn down)
            await self._interrupt(
                key,
                call,
                started,
                cleanup,
                api.Reason.GRACE_EXPIRED,
                f"the grace period of {self.rules.grace_seconds:g} s ran out",
            )
            raise GracePeriodExpired(
                f"step {key!r} was interrupted: the grace period of {self.rules.grace_seconds:g} s ran out"
            ) from None
        if not finished:
            assert timeout is not None
            timed_out = StepTimeoutError(key, timeout)
            delay = retry(timed_out) if retry is not None else None
            await self._interrupt(
                key,
                call,
                started,
                {**cleanup, **_retry_at(delay)},
                "StepTimeout",
                f"it did not finish within its timeout of {timeout:g} s",
            )
            if not self._stopping():
                await self._durable()
            if delay is not None:
                raise RetryScheduled(delay, timed_out)
            raise timed_out
        try:
            output = await call.output()
        except Exception as exc:
            STEP_SECONDS.labels(self.workflow.id).observe(time.monotonic() - t0)
            STEPS.labels(self.workflow.id, "Failed").inc()
            delay = retry(exc) if retry is not None else None
            self._put(stepping.failed(key, started, exc, {**cleanup, **_retry_at(delay)}))
            if not self._stopping():
                await self._durable()
            if delay is not None:
                raise RetryScheduled(delay, exc) from exc
            raise
        STEP_SECONDS.labels(self.workflow.id).observe(time.monotonic() - t0)
        STEPS.labels(self.workflow.id, "Completed").inc()
        self._put(stepping.completed(key, started, output, cleanup))
        if not cleanup:
            self._last_key = key  # "stopped after step X" names the work, not the cleanup
        if not self._stopping() or self._cleanup_depth:
            # When stopping, the final write records it with the terminal phase; a cleanup
            # step is durable at once (the grace period may yet cut the run short).
            await self._checkpoint()
        self._boundary()
        return output

    async def _interrupt(
        self, key: str, call: StepCall, started: dt.datetime, extra: dict[str, Any], why: str, message: str
    ) -> None:
        """Cuts a step off and records it Interrupted (not Completed: it runs again on resume)."""
        if not await call.cut_off():
            self._abandoned(f"synchronous step {key!r} (its thread)" if call.sync else f"async step {key!r}")
        STEPS.labels(self.workflow.id, "Interrupted").inc()
        self.interrupted.append(key)
        self._put(stepping.interrupted(key, started, why, message, extra))

    async def _checkpoint(self) -> None:
        """Records completed steps. By default (interval 0) every step is durable before the
        next one starts; a positive KUBESTEP_CHECKPOINT_SECONDS writes at most that often,
        trading a wider re-run window after a crash for far fewer writes on fast steps.
        Waits, hand-backs and endings always write every record."""
        now = time.monotonic()
        if self.checkpoint_seconds > 0 and now - self._last_checkpoint < self.checkpoint_seconds:
            return
        if self._stop_noted.is_set() or self._cleanup_depth:
            await self._durable()
        else:
            await self._durable(unless_stopped=True)
        self._last_checkpoint = now

    async def _durable(self, unless_stopped: bool = False) -> None:
        """Makes the new records durable before the next step: in this run's status, or with the
        step journal in the worker's next StepBatch (``committing.py``). ``unless_stopped``: a stop
        noted meanwhile preempts the write; the ending write carries every record instead."""
        if self.journal is None:
            await (self._append_unless_stopped() if unless_stopped else self._append_steps())
            return
        entries = self.ledger.take_pending()
        if not entries:
            return
        commit = asyncio.ensure_future(
            self.journal.commit(self.name, self.obj["metadata"]["uid"], self.attempt, entries)
        )
        try:
            if unless_stopped:
                stopped = asyncio.ensure_future(self._stop_noted.wait())
                try:
                    await asyncio.wait({commit, stopped}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopped.cancel()
                if not commit.done():
                    commit.cancel()  # dropped if not yet taken; a write in flight that lands is harmless
                    return
            await commit
        except asyncio.CancelledError:
            commit.cancel()
            raise
        except Exception as exc:
            raise Release(f"step journal write failed: {exc!r}", held=True, cause=exc) from exc

    # ----- status checkpoints with the step journal (the worker's timer calls these) ------------

    def checkpoint_due(self, now: float) -> bool:
        return (
            not self._checkpoint_queued
            and self.journal is not None
            and self.claimed
            and not self._ended
            and not self._ending  # it would only race the ending's write, which carries its records
            and self._deferred is None
            and self.ledger.unsent
            and now - self._last_status_write >= self.status_seconds * self._status_jitter
        )

    def checkpoint_queued(self) -> None:
        """The worker's timer queued a checkpoint of this run (``checkpoint`` runs when a place is
        free): not due again until it has run."""
        self._checkpoint_queued = True

    async def checkpoint(self) -> None:
        """Brings status up to date with the records (steps, counts, the current step, journalLsn),
        so ``kubectl get`` shows progress and the batches holding them can be collected. A failure
        is raised in the workflow at its next boundary. Queued behind other runs' checkpoints, it
        does nothing if the run ended or began its ending meanwhile (that write carries the records)."""
        self._checkpoint_queued = False
        if self._ended or self._ending:
            return
        self._last_status_write = time.monotonic()  # one at a time, even if this one is slow
        self._status_jitter = _jitter()
        self._checkpoint_preempted = False
        append = self._checkpointing = asyncio.ensure_future(self._append_steps())
        try:
            await append
        except asyncio.CancelledError:
            if not self._checkpoint_preempted:
                raise
        except Release as r:
            if r.why in ("lost", "deleted"):
                self.lost = True
            else:
                self._deferred = r
        except Exception as exc:  # _append_steps wraps all it can; anything else is a bug to surface
            self._deferred = Release(f"status checkpoint failed: {exc!r}", held=True, cause=exc)

    async def _preempt_checkpoint(self) -> None:
        """An ending (or a wait) abandons the checkpoint in flight: it writes every record the
        checkpoint would have, and must not wait for its ConfigMap and its status patch, two
        round trips on the busy lane. At 1,300 steps/s a cancel met one about once in fifty
        (each run checkpoints every few seconds) and waited 200–300 ms for it. What the
        checkpoint leaves is consistent: an archive cut short moves the ledger's boundary back
        (``_archive``), a patch that lands after all makes the ending's write conflict, re-read
        and write again."""
        task = self._checkpointing
        if task is None or task.done():
            return
        self._checkpoint_preempted = True
        task.cancel()
        await asyncio.wait({task})  # its cancellation, not ours: never raises

    async def _append_unless_stopped(self) -> None:
        """A stop noted while this append waits (on a saturated apiserver, behind other runs' step
        writes) preempts it: the append is abandoned and the ending write, on the control lane,
        carries every record instead. It is conditional on the resourceVersion, so an abandoned
        append that landed after all only makes it re-read and write again."""
        append = asyncio.ensure_future(self._append_steps())
        stopped = asyncio.ensure_future(self._stop_noted.wait())
        try:
            await asyncio.wait({append, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not append.done():
            append.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await append
            return
        append.result()

    async def _append_steps(self) -> None:
        async with self._append_lock:
            try:
                # The journal's ConfigMaps ride out an apiserver restart like the status write does
                # (the soak found a step run twice when the apiserver died under an archive). A chunk
                # whose answer was lost is written again under a new name: an orphan the garbage
                # collector removes with the run.
                await Outage(self._outage_seconds).retrying(self._archive)
                await self._append_steps_locked()
            except (Release, StopExecution):
                raise
            except Exception as exc:
                # Not the workflow's error, and not for workflow code to catch: let go of
                # the run (re-queued for replay, or Failed if replay would only repeat it).
                raise Release(f"status write failed: {exc!r}", held=True, cause=exc) from exc

    async def _append_steps_locked(self) -> None:
        """Writes the new step records as a JSON patch: appends, not the whole history.

        The request stays small however long the history grows, and it is
        guarded by "test" operations on what makes the run ours (holder,
        attempt, phase) rather than on the resourceVersion, so an unrelated
        change (the operator updating a condition) is not a conflict.
        """
        outage = Outage(self._outage_seconds)
        conflicts = 0
        while conflicts < 10:
            status = self.obj.get("status") or {}
            appended, sent = self.ledger.append_ops(status)
            ops: list[dict[str, Any]] = [
                {"op": "test", "path": "/status/worker", "value": self.worker},
                {"op": "test", "path": "/status/attempt", "value": self.attempt},
                {"op": "test", "path": "/status/phase", "value": status.get("phase")},
                *appended,
            ]
            try:
                with STATUS_WRITE_SECONDS.labels("steps").time():
                    obj = await self.kube.request(
                        "PATCH", self._path + "/status", json_body=ops, content_type="application/json-patch+json"
                    )
                self.obj, self.rv = obj, _rv(obj)
                self.ledger.written(sent)
                self._last_status_write = time.monotonic()
                # The response may carry a cancel whose watch event is now older
                # than what we hold (and so will be dropped): learn it here.
                self._note_stop(obj)
                return
            except (ConflictError, InvalidError) as exc:
                if not lost_race(exc):
                    # Refused for what it writes (schema, CEL): no re-read makes it valid, and a replay
                    # would write it again. Let go with the error (the run ends Failed, give_up).
                    logger.error("run %s: the apiserver refused its step records as invalid: %s", self.name, exc)
                    raise
                conflicts += 1
                await outage.retrying(self._reread)
            except Exception as exc:
                await outage.wait_out(exc)
        raise Release(CONTENDED, held=True)

    async def wait(self, key: str, duration: dt.timedelta) -> None:
        self._boundary()
        rec = await self._recorded(key, "Wait")
        if rec is not None and rec["state"] == api.StepState.COMPLETED:
            self._last_key = key
            return
        if rec is not None:
            # A recorded wait only leaves Waiting when the operator, whose clock
            # rules waits, re-queues the run at wakeAt: it is over. Recorded done
            # with the next status write of this segment.
            self._put({**rec, "state": api.StepState.COMPLETED, "finishedAt": api.fmt_time(api.now())})
            self._last_key = key
            return
        raise Suspend(key, api.later(api.now(), duration.total_seconds()))  # clamped: a wait of years

    async def wait_event(self, key: str, topic: str, timeout: float | None) -> Any:
        """The next event of ``topic`` sent to this run, each delivered to exactly one wait: its
        name is recorded (``status.eventsConsumed``) with the step before the workflow sees it."""
        self._boundary()
        rec = await self._recorded(key, "Event")
        if rec is not None and rec["state"] == api.StepState.COMPLETED:
            self._last_key = key
            if rec.get("timedOut"):
                raise EventTimeoutError(key, topic, timeout)
            return rec.get("output")
        now = api.now()
        event = self.ledger.next_event((self.obj.get("spec") or {}).get("events") or [], topic)
        if event is not None:
            self.ledger.consumed.append(event["name"])
            self._put(
                {
                    "key": key,
                    "kind": "Event",
                    "state": api.StepState.COMPLETED,
                    "topic": topic,
                    "event": event["name"],
                    "startedAt": (rec or {}).get("startedAt") or api.fmt_time(now),
                    "finishedAt": api.fmt_time(now),
                    "output": event.get("data"),
                }
            )
            self._last_key = key
            await self._durable()
            self._boundary()
            return event.get("data")
        if rec is not None and rec.get("wakeAt"):
            # Resumed from this wait with no event: only the operator's clock re-queues a waiting
            # run before its event, at wakeAt. The wait timed out.
            self._put({**rec, "state": api.StepState.COMPLETED, "finishedAt": api.fmt_time(now), "timedOut": True})
            self._last_key = key
            await self._durable()
            raise EventTimeoutError(key, topic, timeout)
        wake = api.parse_time((rec or {}).get("wakeAt")) or (api.later(now, timeout) if timeout is not None else None)
        raise Suspend(key, wake, topic)

    # ----- child runs (``_protocol/family.py``) -------------------------------------------------

    async def start_children(self, key: str, calls: list[ChildCall]) -> list[dict[str, Any]]:
        """A step that creates the children, owned by this run. Their names come from this run's uid
        and the key, so a create repeated after a crash (the step's record lost) finds the child it
        made: a 409 for a child of this run is success, for anything else an error."""
        depth = api.family.depth_of(self.obj) + 1
        if depth > api.family.MAX_DEPTH:
            raise ChildLimitError(
                f"step {key!r} would start a child run {depth} levels below its root; "
                f"a tree is at most {api.family.MAX_DEPTH} levels deep"
            )
        path = api.execution_path(self.namespace)
        uid = self.obj["metadata"]["uid"]
        gate = asyncio.Semaphore(CHILD_CREATES)

        async def create(i: int, call: ChildCall) -> dict[str, Any]:
            body = api.family.child_body(
                self.obj,
                key if len(calls) == 1 else f"{key}/{i}",
                call.workflow,
                to_json(call.payload),
                run_timeout_seconds=call.run_timeout_seconds,
                queue=call.queue,
            )
            name = body["metadata"]["name"]

            async def once() -> None:
                try:
                    await self.kube.create(path, body)
                except ConflictError:
                    # Made already: by this step before a crash, or by a create whose answer an outage lost.
                    existing = await self.kube.get(api.execution_path(self.namespace, name))
                    if api.family.parent_of(existing) != (self.name, uid):
                        raise WorkflowDefinitionError(
                            f"child run {name} of step {key!r} exists already and is not this run's"
                        ) from None

            async with gate:
                await self._riding_out(once, f"starting child run {name}")
            return {"id": name, "workflow": call.workflow}

        async def create_all() -> list[dict[str, Any]]:
            return list(await asyncio.gather(*(create(i, c) for i, c in enumerate(calls))))

        out: list[dict[str, Any]] = await self.run_step(key, create_all, (), {})
        return out

    async def wait_children(self, key: str, ids: list[str]) -> list[dict[str, Any]]:
        """Until every child has ended: their outcomes, recorded with the wait (a replay returns them
        even if a child is gone since). While one runs the run is released (Waiting) and the operator
        re-queues it when the last one ends."""
        self._boundary()
        rec = await self._recorded(key, "Wait")
        if rec is not None and rec["state"] == api.StepState.COMPLETED:
            self._last_key = key
            return list(rec.get("output") or [])
        found: list[list[dict[str, Any]] | None] = []

        async def read() -> None:
            found[:] = [await self._child_outcomes(ids)]

        await self._riding_out(read, "reading its child runs")
        outcomes = found[0]
        if outcomes is None:
            raise Suspend(key, None, children=tuple(ids))
        now = api.fmt_time(api.now())
        self._put(
            {
                "key": key,
                "kind": "Wait",
                "state": api.StepState.COMPLETED,
                "startedAt": (rec or {}).get("startedAt") or now,
                "finishedAt": now,
                "output": outcomes,
            }
        )
        self._last_key = key
        await self._durable()
        self._boundary()
        return outcomes

    async def _riding_out(self, call: Callable[[], Any], what: str) -> None:
        """``call`` through an apiserver outage (``Outage``); one that outlasts it lets go of the run
        (re-queued, resumed by replay) rather than failing the workflow: the soak found a tree's root
        Failed by a list cut short by an apiserver restart. Other errors are the workflow's."""
        try:
            await Outage(self._outage_seconds).retrying(call)
        except Exception as exc:
            if transient(exc):
                raise Release(f"{what} failed: {exc!r}", held=True, cause=exc) from exc
            raise

    async def _child_outcomes(self, ids: list[str]) -> list[dict[str, Any]] | None:
        """How each child ended, or None while one has not. One list of this run's children (by the
        parent label, then by the ownerReference's uid), not a read per child."""
        selector = f"{api.family.LABEL_PARENT}={api.family.label_value(self.name)}"
        mine: dict[str, dict[str, Any]] = {}
        params: dict[str, Any] = {"labelSelector": selector, "limit": 500}
        while True:
            page = await self.kube.get(api.execution_path(self.namespace), params)
            for item in page.get("items") or []:
                if api.family.parent_of(item) == (self.name, self.obj["metadata"]["uid"]):
                    mine[item["metadata"]["name"]] = item
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                break
            params = {**params, "continue": token}
        out = []
        for child in ids:
            body = mine.get(child)
            if body is None:
                out.append(
                    {
                        "id": child,
                        "phase": api.Phase.FAILED,
                        "reason": "Deleted",
                        "error": {"type": "ChildDeleted", "message": f"child run {child} was deleted before it ended"},
                    }
                )
                continue
            outcome = api.family.outcome(body)
            if outcome is None:
                return None
            out.append(outcome)
        return out

    # ----- the whole run ----------------------------------------------------------------------

    async def execute(self) -> str:
        """Runs the workflow from the top (replaying recorded steps) and records how it ended."""
        try:
            outcome = await self._run_workflow()
            while True:
                try:
                    kind = await self._conclude(outcome)
                    if kind in api.TERMINAL_PHASES:
                        await self._keep()
                    return kind
                except StopExecution:
                    # Told to stop while writing another ending (a write conflict
                    # showed us the cancellation): the stop wins.
                    outcome = (api.Phase.CANCELLED, None)
                except Release as r:
                    if r.held:
                        await self.give_up(r)
                    return r.why
        finally:
            self._ended = True
            self._disarm()

    async def _run_workflow(self) -> tuple[str, Any]:
        """The workflow in a task of its own, so the hard stop can interrupt it wherever it awaits."""
        task = asyncio.ensure_future(self._workflow_outcome())
        self._workflow_task = task
        if self.rules.hard_stop_at is not None:
            self._arm_hard_stop()  # stopped before it started (a cancel seen with the claim)
        while not task.done():
            await asyncio.wait({task}, timeout=None if not self.hard_stopped else SETTLE_SECONDS)
            if self.hard_stopped and not task.done():
                # Interrupted, and still not unwound after SETTLE_SECONDS: workflow code that
                # swallows cancellation. End the run anyway; the worker restarts to shed it.
                await asyncio.wait({task}, timeout=SETTLE_SECONDS)
                if not task.done():
                    self._abandoned("the workflow code")
                    return (api.Phase.CANCELLED, None)
        if task.cancelled():
            if self.hard_stopped:
                return (api.Phase.CANCELLED, None)  # interrupted outside any step
            raise asyncio.CancelledError()
        return task.result()

    async def _workflow_outcome(self) -> tuple[str, Any]:
        ctx = WorkflowContext(self)
        payload = (self.obj.get("spec") or {}).get("input")
        try:
            try:
                result = await self.workflow.fn(ctx, payload)
                self._check_stop()  # returning is a boundary too
                mismatch = self.ledger.mismatch("returns")
                if mismatch is not None:
                    raise mismatch
                return (api.Phase.COMPLETED, to_json(result))
            except (Suspend, Release):
                raise
            except ReplayMismatch as m:
                return (api.Phase.FAILED, m)
            except StopExecution:
                return (api.Phase.CANCELLED, None)
            except Exception as exc:
                # Workflow code that swallowed the stop and raised something
                # else still ends as a stop, never as a failure.
                self._check_stop()
                return (api.Phase.FAILED, exc)
        except Suspend as s:
            # A stop learned while the workflow unwound (its finally blocks may await).
            try:
                self._check_stop()
            except StopExecution:
                return (api.Phase.CANCELLED, None)
            return (api.Phase.WAITING, s)
        except Release as r:
            return ("release", r)
        except StopExecution:
            return (api.Phase.CANCELLED, None)
        except ReplayMismatch as m:  # raised while a wait unwound
            return (api.Phase.FAILED, m)

    async def _conclude(self, outcome: tuple[str, Any]) -> str:
        kind, value = outcome
        if kind == api.Phase.COMPLETED:
            await self._finish_completed(value)
        elif kind == api.Phase.FAILED:
            await self._finish_failed(value)
        elif kind == api.Phase.WAITING:
            await self._finish_wait(value)
        elif kind == api.Phase.CANCELLED:
            await self._finish_cancelled()
        elif value.why == "handback":
            await self._hand_back()
            return "handback"
        elif value.held:
            await self.give_up(value)
            return "error"
        else:
            return str(value.why)
        return kind

    async def _keep(self) -> None:
        """The run ended: the store keeps its final object (the Postgres store: history after the
        object is deleted). The ending is written already, so an outage here costs only that copy."""
        try:
            await Outage(self._outage_seconds).retrying(lambda: self.store.ended(self.obj))
        except Exception as exc:
            logger.warning("run %s: the step store did not keep its final state: %r", self.name, exc)

    async def _finish_completed(self, result: Any) -> None:
        at = api.now()

        def build(s: dict[str, Any]) -> dict[str, Any]:
            generation = self.obj["metadata"].get("generation")
            return {**self._steps_patch(), **api.completed(s.get("conditions"), result, at, generation)}

        await self._write(build, stoppable=True)
        self._event(api.Phase.COMPLETED, f"workflow completed after {len(self.ledger.index)} step(s)")

    async def _finish_failed(self, exc: BaseException) -> None:
        at = api.now()
        last = self.ledger.rec(len(self.ledger.records) - 1) if self.ledger.records else None
        step = last["key"] if last is not None and last["state"] == api.StepState.FAILED else None
        mismatch = isinstance(exc, ReplayMismatch)
        err = error_record(exc, step, with_traceback=not mismatch)  # a mismatch's traceback is the worker's own
        message = err["message"] if mismatch else f"{err['type']}: {err['message']}"

        def build(s: dict[str, Any]) -> dict[str, Any]:
            return {
                **self._steps_patch(),
                **api.failed(
                    s.get("conditions"),
                    err,
                    api.Reason.REPLAY_MISMATCH if mismatch else api.Reason.WORKFLOW_ERROR,
                    message,
                    at,
                    self.obj["metadata"].get("generation"),
                ),
            }

        await self._write(build, stoppable=True)
        self._event(api.Phase.FAILED, (message if mismatch else f"workflow raised {message}")[:1000], warning=True)

    def _holder(self) -> endings.Holder:
        return endings.Holder(
            self.worker,
            self.obj,
            self._last_key,
            self.hard_stopped,
            tuple(self.interrupted),
            self.rules.grace_seconds,
            self.cancel_audit,
        )

    async def _finish_cancelled(self) -> None:
        at = api.now()
        reason = self.stop_reason or api.StopReason.REQUESTED

        def build(s: dict[str, Any]) -> dict[str, Any]:
            return {**self._steps_patch(), **endings.cancelled(s, self._holder(), reason, self._noticed, at)}

        await self._write(build)
        after = self._holder().stopped_after()
        self._event(api.Phase.CANCELLED, f"{reason}: stopped{after}"[:1000], warning=self.hard_stopped)

    async def _finish_wait(self, s: Suspend) -> None:
        self._put(endings.wait_record(s.key, s.wake_at, s.topic, api.now()))
        message = endings.waiting_message(s.key, s.wake_at, s.topic, s.children)

        def build(_s: dict[str, Any]) -> dict[str, Any]:
            return {
                **self._steps_patch(),
                **api.waiting(s.key, message, wake_at=s.wake_at, topic=s.topic, children=s.children),
            }

        await self._write(build, stoppable=True)
        self._event(api.Phase.WAITING, f"{message}; worker released")

    async def _hand_back(self) -> None:
        def build(s: dict[str, Any]) -> dict[str, Any]:
            return {**self._steps_patch(), **endings.handed_back(s, self._holder(), api.now())}

        try:
            await self._write(build, stoppable=True)
        except Release:
            return
        self._event(api.Reason.HANDED_BACK, f"worker {self.worker} is shutting down; run re-queued")

    async def give_up(self, exc: BaseException) -> None:
        """Last resort after an unexpected error on a run this worker still holds.

        Without it the run would stay Running under a lease that keeps being
        renewed, and nobody would ever finish it. Each try re-reads the run and
        writes only while it is still ours (same holder and attempt).
        """
        why = f"worker {self.worker} could not go on"
        if isinstance(exc, Release) and exc.cause is not None:
            exc = exc.cause
        logger.warning("run %s: letting go after %r", self.name, exc)
        failure = None if transient(exc) else error_record(exc, with_traceback=False)
        if isinstance(exc, TooLargeError) and failure is not None:
            failure["message"] = (
                f"the run's status would outgrow what the apiserver stores ({exc.message}); "
                "keep step outputs and results well under 1 MiB, or store them elsewhere"
            )
        for delay in (0.5, 1.0, 2.0, 4.0, 8.0):
            try:
                fresh = await self.control.get(self._path)
                status = fresh.get("status") or {}
                if (status.get("worker"), status.get("attempt")) != (self.worker, self.attempt) or status.get(
                    "phase"
                ) not in api.HELD_PHASES:
                    return
                patch = let_go(fresh, self.worker, why, failure, audited=self.cancel_audit)
                await self.control.update_status(fresh, patch)
                self.obj, self.rv = fresh, _rv(fresh)
                reason = str(patch["reason"]) if patch["phase"] == api.Phase.QUEUED else str(patch["phase"])
                self._event(reason, f"{why}: {type(exc).__name__}: {exc}"[:1000], warning=True)
                return
            except NotFoundError:
                return
            except Exception as e:
                logger.warning("run %s: letting go failed (%r); retrying in %.1fs", self.name, e, delay)
                await asyncio.sleep(delay)
        logger.error(
            "run %s: could not let go of the run; the operator re-queues it once this worker is gone", self.name
        )
