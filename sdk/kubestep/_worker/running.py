"""One execution held by this worker: claim, replay, step records, final status.

Every status write here is conditional on the resourceVersion this worker
last saw, and re-checks after a conflict that the run is still held by this
worker (``status.worker``) in a held phase. That is what keeps two workers
from both executing a run, and a worker that lost its run (the operator
re-queued it after the worker's lease expired) from writing over its new
holder.

Step boundaries are the only places a run stops: before and after every
``ctx.step.run``, at ``ctx.step.wait_for`` and when the workflow returns.
There the run checks, in order: lost, cancelled (operator's
``status.cancellation``), its own clock against the run budget, and a
hand-back request (SIGTERM). The step in flight is never interrupted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import logging
import os
import time
import traceback
from collections.abc import Callable
from typing import Any

import httpx

from .. import _api as api
from .. import _journal as journal
from .._context import WorkflowContext
from .._errors import (
    ApiError,
    ConflictError,
    ExecutionCancelled,
    InvalidError,
    NotFoundError,
    RunTimedOut,
    StopExecution,
    TooLargeError,
    WorkflowDefinitionError,
)
from .._kube import Kube, background
from .._metrics import STATUS_WRITE_SECONDS, STEP_SECONDS, STEPS
from .._workflow import Workflow

logger = logging.getLogger("kubestep.worker")


class _Suspend(BaseException):
    """Unwinds the workflow at ``wait_for``: the run is released until ``wake_at``."""

    def __init__(self, key: str, wake_at: dt.datetime) -> None:
        self.key, self.wake_at = key, wake_at


class _Release(BaseException):
    """Unwinds the workflow without a terminal status: hand-back, lost run, or
    (``held``) a status write that kept failing on a run we still hold."""

    def __init__(self, why: str, held: bool = False, cause: BaseException | None = None) -> None:
        self.why, self.held, self.cause = why, held, cause


_CONTENDED = "too many write conflicts"


def let_go(obj: dict[str, Any], holder: str, why: str, failure: dict[str, Any] | None = None) -> dict[str, Any]:
    """The status patch for a run its holder lets go of without finishing it.

    A run told to stop (by the operator, or by the user's irrevocable
    ``spec.cancelRequested``) ends Cancelled, acknowledged by ``holder``;
    otherwise ``failure`` (an error that replay would only repeat) fails it,
    and anything else re-queues it to resume by replay.
    """
    at = api.now()
    status, generation = obj.get("status") or {}, obj["metadata"].get("generation")
    cancellation = status.get("cancellation")
    if not cancellation and (obj.get("spec") or {}).get("cancelRequested"):
        cancellation = {"reason": api.REQUESTED, "requestedAt": api.fmt_time(at)}
    if cancellation:
        return {
            "cancellation": {**cancellation, "acknowledgedAt": api.fmt_time(at), "acknowledgedBy": holder},
            **api.finished_status(status, api.CANCELLED, cancellation.get("reason", api.REQUESTED),
                                  f"{why} while the run was stopping", at, generation),
        }
    if failure is not None:
        message = f"{why}: {failure['type']}: {failure['message']}"[:1000]
        return {"error": failure, **api.finished_status(status, api.FAILED, "WorkerError", message, at, generation)}
    return {"phase": api.QUEUED, "reason": "Requeued", "message": f"{why}; the run resumes by replay",
            "worker": None, "deadline": None, "segmentStartedAt": None}


def _transient(exc: BaseException) -> bool:
    """Worth another attempt by replay (network, server or contention), unlike, say, a
    result too large for the object, which replay would only repeat."""
    if isinstance(exc, _Release):
        return exc.cause is None or _transient(exc.cause)
    if isinstance(exc, (httpx.TransportError, ConflictError)):
        return True
    if isinstance(exc, TooLargeError):
        return False
    return isinstance(exc, ApiError) and (exc.status_code >= 500 or exc.status_code == 429)


def _rv(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["resourceVersion"])


def _newer(candidate: str, current: str) -> bool:
    # resourceVersions are opaque by contract; etcd's are integers. Comparing
    # them only saves a round trip: correctness rests on the preconditions.
    try:
        return int(candidate) > int(current)
    except ValueError:
        return candidate != current


def _to_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _error(exc: BaseException, step: str | None = None, with_traceback: bool = True) -> dict[str, Any]:
    err: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)[:4000]}
    if step is not None:
        err["step"] = step
    if with_traceback:
        err["traceback"] = "".join(traceback.format_exception(exc))[-8000:]
    return err


class Run:
    """The worker-side state of one execution while this worker holds it."""

    def __init__(self, kube: Kube, workflow: Workflow, obj: dict[str, Any], worker: str) -> None:
        self.kube = kube
        self.workflow = workflow
        self.worker = worker
        self.obj = obj
        self.name: str = obj["metadata"]["name"]
        self.namespace: str = obj["metadata"]["namespace"]
        self.rv = _rv(obj)
        status = obj.get("status") or {}
        # Step records as the server lays them out: the journal's (archived, a prefix) then
        # status.steps. A key may repeat (a failed step run again after it was archived):
        # its last record counts, and _index finds it.
        self.steps: list[dict[str, Any]] = [dict(s) for s in status.get("steps") or []]
        self._index = {rec["key"]: i for i, rec in enumerate(self.steps)}
        self.journal: list[dict[str, Any]] = list(status.get("journal") or [])
        self._archived = 0  # records of self.steps in journal ConfigMaps
        self._server_archived = 0  # ... as status.journal on the server lists them
        self.window = int(os.environ.get("KUBESTEP_STATUS_STEPS", "50"))
        self.attempt: int = int(status.get("attempt") or 0)
        self.stop_reason: str | None = None
        self.handback = False
        self.lost = False
        self.claimed = False
        self.deadline_mono: float | None = None
        self._seen: set[str] = set()
        self._flushed = len(self.steps)  # records the server has, as a prefix of self.steps
        self._dirty: set[int] = set()  # indices below _flushed replaced since
        self.checkpoint_seconds = float(os.environ.get("KUBESTEP_CHECKPOINT_SECONDS", "0"))
        self._last_checkpoint = time.monotonic()
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
        status = obj.get("status") or {}
        reason = (status.get("cancellation") or {}).get("reason")
        if reason is None and (obj.get("spec") or {}).get("cancelRequested"):
            # The user's request is irrevocable (a CEL rule forbids undoing it),
            # so the holder may act on it at once; the operator's Cancelling
            # write says the same a moment later. This keeps the operator's
            # hop off the cancel path.
            reason = api.REQUESTED
        if reason and self.stop_reason is None:
            self.stop_reason = reason

    # ----- status writes ----------------------------------------------------------------------

    async def _write(self, build: Callable[[dict[str, Any]], dict[str, Any]], stoppable: bool = False) -> None:
        """Conditional status patch, rebuilt and retried after conflicts while we still hold the run.

        ``stoppable`` writes (every ending but Cancelled) give way to a
        cancellation learned from the conflict: they raise at that boundary.
        """
        async with self._append_lock:
            await self._archive()
        for _ in range(10):
            try:
                with STATUS_WRITE_SECONDS.labels("end").time():
                    obj = await self.kube.merge_patch(
                        self._path + "/status", {"status": build(self.obj.get("status") or {})}, self.rv
                    )
                self.obj, self.rv = obj, _rv(obj)
                self._steps_written()
                return
            except ConflictError:
                await self._reread()
                if stoppable and self.stop_reason is not None:
                    self._check_stop()
        raise _Release(_CONTENDED, held=True)

    async def _reread(self) -> None:
        """After a lost write race: the current object, and whether the run is still ours."""
        try:
            fresh = await self.kube.get(self._path)
        except NotFoundError:
            raise _Release("deleted") from None
        self.obj, self.rv = fresh, _rv(fresh)
        self._learn(fresh)
        if self.lost:
            raise _Release("lost") from None

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
        patch: dict[str, Any] = {"steps": self.steps[self._archived:], "stepsCompleted": self._completed_count()}
        if self.journal:
            patch["journal"] = self.journal
        return patch

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
        if status.get("phase") != api.QUEUED or spec.get("cancelRequested"):
            return False
        wall, mono = api.now(), time.monotonic()
        budget = spec.get("runTimeoutSeconds")
        resumed = bool(status.get("startedAt"))
        patch: dict[str, Any] = {
            "phase": api.RUNNING,
            "reason": "Resumed" if resumed else "Started",
            "message": f"running on {self.worker}",
            "worker": self.worker,
            "attempt": self.attempt + 1,
            "startedAt": status.get("startedAt") or api.fmt_time(wall),
            "segmentStartedAt": api.fmt_time(wall),
            "deadline": api.fmt_time(wall + dt.timedelta(seconds=budget)) if budget else None,
            "wakeAt": None,
            "conditions": api.merge_conditions(
                status.get("conditions"),
                api.condition(
                    api.COND_SCHEDULED, True, "Claimed", f"held by worker {self.worker}", wall,
                    self.obj["metadata"].get("generation"),
                ),
            ),
        }
        try:
            with STATUS_WRITE_SECONDS.labels("claim").time():
                obj = await self.kube.merge_patch(self._path + "/status", {"status": patch}, self.rv)
        except NotFoundError:
            return False
        except Exception as exc:
            if _transient(exc) and not isinstance(exc, ConflictError):
                # The claim may have been applied with its answer lost: act as if it was,
                # so the caller lets go of the run (a no-op if it is not ours).
                self.claimed, self.attempt = True, self.attempt + 1
            raise
        self.obj, self.rv = obj, _rv(obj)
        self.claimed = True
        self.attempt += 1
        self.deadline_mono = mono + budget if budget else None
        verb = "Resumed" if resumed else "Started"
        self._event(verb, f"{verb} on worker {self.worker} (attempt {self.attempt})")
        # Replay needs the whole history: the archived records, then status.steps.
        status = obj.get("status") or {}
        self.journal = list(status.get("journal") or [])
        archived = await journal.load(self.kube, self.namespace, self.journal)
        self.steps = archived + [dict(r) for r in status.get("steps") or []]
        self._index = {rec["key"]: i for i, rec in enumerate(self.steps)}
        self._archived = len(archived)
        self._steps_written()
        return True

    # ----- boundaries and steps (called through WorkflowContext) ------------------------------

    def _stopping(self) -> bool:
        if self.stop_reason is None and self.deadline_mono is not None and time.monotonic() >= self.deadline_mono:
            self.stop_reason = api.RUN_TIMEOUT
        return self.lost or self.stop_reason is not None or self.handback

    def _check_stop(self) -> None:
        """Raises if the run must stop: lost, cancelled or out of budget (not for hand-back)."""
        if not self._stopping():
            return
        if self.lost:
            raise _Release("lost")
        if self.stop_reason == api.REQUESTED:
            raise ExecutionCancelled(f"execution {self.name} was cancelled")
        if self.stop_reason == api.RUN_TIMEOUT:
            raise RunTimedOut(f"execution {self.name} exceeded its run timeout")

    def _boundary(self) -> None:
        """A step boundary: stop, or hand the run back if the worker is shutting down."""
        self._check_stop()
        if self.handback:
            raise _Release("handback")

    def _recorded(self, key: str, kind: str) -> dict[str, Any] | None:
        if key in self._seen:
            raise WorkflowDefinitionError(f"step key {key!r} is used twice in one execution")
        self._seen.add(key)
        i = self._index.get(key)
        if i is None:
            return None
        rec = self.steps[i]
        if rec["kind"] != kind:
            raise WorkflowDefinitionError(f"step {key!r} was a {rec['kind']} step when recorded")
        return rec

    def _put(self, rec: dict[str, Any]) -> None:
        i = self._index.get(rec["key"])
        if i is not None and i >= self._archived:
            self.steps[i] = rec
            self._dirty.add(i)  # even if unflushed: an append of it may be in flight
            return
        # New, or its earlier record is archived (immutable): append; the last one counts.
        self._index[rec["key"]] = len(self.steps)
        self.steps.append(rec)

    def _steps_written(self, upto: int | None = None, dirty: set[int] | None = None,
                       archived: int | None = None) -> None:
        """The server now has our first ``upto`` records (all, by default) as they were when
        sent: the dirty ones sent are clean. A record put while the write was in flight
        stays unsent (index ≥ upto) or dirty (put again after the send)."""
        self._flushed = len(self.steps) if upto is None else upto
        self._dirty = set() if dirty is None else self._dirty - dirty
        self._server_archived = self._archived if archived is None else archived

    def _completed_count(self, upto: int | None = None) -> int:
        n = len(self.steps) if upto is None else upto
        return sum(1 for i in self._index.values() if i < n and self.steps[i]["state"] == "Completed")

    async def _archive(self) -> None:
        """Moves the oldest final records into journal ConfigMaps once status holds more
        than ``window`` (KUBESTEP_STATUS_STEPS; 0 never archives), down to half of it.
        The next status write lists them and drops them from status.steps."""
        if self.window <= 0 or len(self.steps) - self._archived <= self.window:
            return
        end, i = len(self.steps) - self.window // 2, self._archived
        while i < end and self.steps[i]["state"] in ("Completed", "Failed"):
            i += 1
        if i > self._archived:
            # Move the boundary first: a concurrent step that puts a record of one of these
            # keys while the ConfigMaps are written must append it, not change the copy.
            start, self._archived = self._archived, i
            try:
                self.journal = self.journal + await journal.archive(self.kube, self.obj, self.steps[start:i])
            except BaseException:
                self._archived = start
                raise

    async def run_step(self, key: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self._boundary()
        rec = self._recorded(key, "Run")
        if rec is not None and rec["state"] == "Completed":
            self._last_key = key
            STEPS.labels(self.workflow.id, "Replayed").inc()
            return rec.get("output")  # replay: never run a completed step twice
        started = api.now()
        t0 = time.monotonic()
        try:
            if inspect.iscoroutinefunction(fn):
                out = await fn(*args, **kwargs)
            else:
                # A thread keeps the event loop (watch, lease renewals) alive during sync steps.
                out = await asyncio.to_thread(fn, *args, **kwargs)
                if inspect.isawaitable(out):
                    out = await out
            output = _to_json(out)
        except Exception as exc:
            STEP_SECONDS.labels(self.workflow.id).observe(time.monotonic() - t0)
            STEPS.labels(self.workflow.id, "Failed").inc()
            failed = {"key": key, "kind": "Run", "state": "Failed", "startedAt": api.fmt_time(started),
                      "finishedAt": api.fmt_time(api.now()), "error": _error(exc, with_traceback=False)}
            self._put(failed)
            if not self._stopping():
                await self._append_steps()
            raise
        STEP_SECONDS.labels(self.workflow.id).observe(time.monotonic() - t0)
        STEPS.labels(self.workflow.id, "Completed").inc()
        self._put({"key": key, "kind": "Run", "state": "Completed", "startedAt": api.fmt_time(started),
                   "finishedAt": api.fmt_time(api.now()), "output": output})
        self._last_key = key
        if not self._stopping():
            # When stopping, the final write records it with the terminal phase.
            await self._checkpoint()
        self._boundary()
        return output

    async def _checkpoint(self) -> None:
        """Records completed steps. By default (interval 0) every step is durable before the
        next one starts; a positive KUBESTEP_CHECKPOINT_SECONDS writes at most that often,
        trading a wider re-run window after a crash for far fewer writes on fast steps.
        Waits, hand-backs and endings always write every record."""
        now = time.monotonic()
        if self.checkpoint_seconds > 0 and now - self._last_checkpoint < self.checkpoint_seconds:
            return
        await self._append_steps()
        self._last_checkpoint = now

    async def _append_steps(self) -> None:
        async with self._append_lock:
            try:
                await self._archive()
                await self._append_steps_locked()
            except (_Release, StopExecution):
                raise
            except Exception as exc:
                # Not the workflow's error, and not for workflow code to catch: let go of
                # the run (re-queued for replay, or Failed if replay would only repeat it).
                raise _Release(f"status write failed: {exc!r}", held=True, cause=exc) from exc

    async def _append_steps_locked(self) -> None:
        """Writes the new step records as a JSON patch: appends, not the whole history.

        The request stays small however long the history grows, and it is
        guarded by "test" operations on what makes the run ours (holder,
        attempt, phase) rather than on the resourceVersion, so an unrelated
        change (the operator updating a condition) is not a conflict.
        """
        for _ in range(10):
            status = self.obj.get("status") or {}
            ops: list[dict[str, Any]] = [
                {"op": "test", "path": "/status/worker", "value": self.worker},
                {"op": "test", "path": "/status/attempt", "value": self.attempt},
                {"op": "test", "path": "/status/phase", "value": status.get("phase")},
            ]
            # What this write sends, fixed now: steps of the same run running concurrently
            # may put records while it is in flight.
            upto, dirty, archived = len(self.steps), set(self._dirty), self._archived
            if "steps" not in status or archived != self._server_archived:
                # First records, or some just archived: status.steps anew, with the journal.
                ops.append({"op": "add", "path": "/status/steps", "value": self.steps[archived:upto]})
                if self.journal:
                    ops.append({"op": "add", "path": "/status/journal", "value": self.journal})
            else:
                ops += [{"op": "replace", "path": f"/status/steps/{i - archived}", "value": self.steps[i]}
                        for i in sorted(dirty) if i < self._flushed]
                ops += [{"op": "add", "path": "/status/steps/-", "value": rec}
                        for rec in self.steps[self._flushed:upto]]
            ops.append({"op": "add", "path": "/status/stepsCompleted", "value": self._completed_count(upto)})
            try:
                with STATUS_WRITE_SECONDS.labels("steps").time():
                    obj = await self.kube.request("PATCH", self._path + "/status", json_body=ops,
                                                  content_type="application/json-patch+json")
                self.obj, self.rv = obj, _rv(obj)
                self._steps_written(upto, dirty, archived)
                # The response may carry a cancel whose watch event is now older
                # than what we hold (and so will be dropped): learn it here.
                self._note_stop(obj)
                return
            except (ConflictError, InvalidError):
                await self._reread()
        raise _Release(_CONTENDED, held=True)

    async def wait(self, key: str, duration: dt.timedelta) -> None:
        self._boundary()
        rec = self._recorded(key, "Wait")
        if rec is not None and rec["state"] == "Completed":
            self._last_key = key
            return
        if rec is not None:
            # A recorded wait only leaves Waiting when the operator, whose clock
            # rules waits, re-queues the run at wakeAt: it is over. Recorded done
            # with the next status write of this segment.
            self._put({**rec, "state": "Completed", "finishedAt": api.fmt_time(api.now())})
            self._last_key = key
            return
        raise _Suspend(key, api.now() + duration)

    # ----- the whole run ----------------------------------------------------------------------

    async def execute(self) -> str:
        """Runs the workflow from the top (replaying recorded steps) and records how it ended."""
        outcome = await self._run_workflow()
        while True:
            try:
                return await self._conclude(outcome)
            except StopExecution:
                # Told to stop while writing another ending (a write conflict
                # showed us the cancellation): the stop wins.
                outcome = (api.CANCELLED, None)
            except _Release as r:
                if r.held:
                    await self.give_up(r)
                return r.why

    async def _run_workflow(self) -> tuple[str, Any]:
        ctx = WorkflowContext(self)
        payload = (self.obj.get("spec") or {}).get("input")
        try:
            try:
                result = await self.workflow.fn(ctx, payload)
                self._check_stop()  # returning is a boundary too
                return (api.COMPLETED, _to_json(result))
            except (_Suspend, _Release):
                raise
            except StopExecution:
                return (api.CANCELLED, None)
            except Exception as exc:
                # Workflow code that swallowed the stop and raised something
                # else still ends as a stop, never as a failure.
                self._check_stop()
                return (api.FAILED, exc)
        except _Suspend as s:
            # A stop learned while the workflow unwound (its finally blocks may await).
            try:
                self._check_stop()
            except StopExecution:
                return (api.CANCELLED, None)
            return (api.WAITING, s)
        except _Release as r:
            return ("release", r)
        except StopExecution:
            return (api.CANCELLED, None)

    async def _conclude(self, outcome: tuple[str, Any]) -> str:
        kind, value = outcome
        if kind == api.COMPLETED:
            await self._finish_completed(value)
        elif kind == api.FAILED:
            await self._finish_failed(value)
        elif kind == api.WAITING:
            await self._finish_wait(value)
        elif kind == api.CANCELLED:
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

    async def _finish_completed(self, result: Any) -> None:
        at = api.now()

        def build(s: dict[str, Any]) -> dict[str, Any]:
            return {**self._steps_patch(), "result": result,
                    **api.finished_status(s, api.COMPLETED, "Succeeded", "workflow returned", at,
                                          self.obj["metadata"].get("generation"))}

        await self._write(build, stoppable=True)
        self._event(api.COMPLETED, f"workflow completed after {len(self._index)} step(s)")

    async def _finish_failed(self, exc: Exception) -> None:
        at = api.now()
        step = self.steps[-1]["key"] if self.steps and self.steps[-1]["state"] == "Failed" else None
        err = _error(exc, step)

        def build(s: dict[str, Any]) -> dict[str, Any]:
            return {**self._steps_patch(), "error": err,
                    **api.finished_status(s, api.FAILED, "WorkflowError", f"{err['type']}: {err['message']}"[:1000],
                                          at, self.obj["metadata"].get("generation"))}

        await self._write(build, stoppable=True)
        self._event(api.FAILED, f"workflow raised {err['type']}: {err['message']}"[:1000], warning=True)

    async def _finish_cancelled(self) -> None:
        at = api.now()
        reason = self.stop_reason or api.REQUESTED
        after = f" after step {self._last_key!r}" if self._last_key else " before its first step"

        def build(s: dict[str, Any]) -> dict[str, Any]:
            canc = dict(s.get("cancellation") or {})
            if not canc.get("reason"):
                requested = s.get("deadline") if reason == api.RUN_TIMEOUT else None
                canc = {"reason": reason, "requestedAt": requested or api.fmt_time(at)}
            canc.update(acknowledgedAt=api.fmt_time(at), acknowledgedBy=self.worker)
            if canc["reason"] == api.RUN_TIMEOUT:
                budget = (self.obj.get("spec") or {}).get("runTimeoutSeconds")
                message = f"run exceeded runTimeoutSeconds={budget} of continuous running time; stopped{after}"
            else:
                message = f"cancellation requested; stopped at the step boundary{after}"
            return {**self._steps_patch(), "cancellation": canc,
                    **api.finished_status(s, api.CANCELLED, canc["reason"], message, at,
                                          self.obj["metadata"].get("generation"))}

        await self._write(build)
        self._event(api.CANCELLED, f"{reason}: stopped{after}")

    async def _finish_wait(self, s: _Suspend) -> None:
        at = api.now()
        self._put({"key": s.key, "kind": "Wait", "state": "Waiting", "startedAt": api.fmt_time(at),
                   "wakeAt": api.fmt_time(s.wake_at)})

        def build(_s: dict[str, Any]) -> dict[str, Any]:
            return {**self._steps_patch(), "phase": api.WAITING, "reason": "WaitingFor",
                    "message": f"waiting on {s.key!r} until {api.fmt_time(s.wake_at)}",
                    "worker": None, "deadline": None, "segmentStartedAt": None,
                    "wakeAt": api.fmt_time(s.wake_at)}

        await self._write(build, stoppable=True)
        self._event(api.WAITING, f"waiting on {s.key!r} until {api.fmt_time(s.wake_at)}; worker released")

    async def _hand_back(self) -> None:
        def build(_s: dict[str, Any]) -> dict[str, Any]:
            return {**self._steps_patch(), "phase": api.QUEUED, "reason": "HandedBack",
                    "message": f"worker {self.worker} shut down; the run resumes by replay",
                    "worker": None, "deadline": None, "segmentStartedAt": None}

        try:
            await self._write(build, stoppable=True)
        except _Release:
            return
        self._event("HandedBack", f"worker {self.worker} is shutting down; run re-queued")

    async def give_up(self, exc: BaseException) -> None:
        """Last resort after an unexpected error on a run this worker still holds.

        Without it the run would stay Running under a lease that keeps being
        renewed, and nobody would ever finish it. Each try re-reads the run and
        writes only while it is still ours (same holder and attempt).
        """
        why = f"worker {self.worker} could not go on"
        if isinstance(exc, _Release) and exc.cause is not None:
            exc = exc.cause
        failure = None if _transient(exc) else _error(exc, with_traceback=False)
        if isinstance(exc, TooLargeError) and failure is not None:
            failure["message"] = (f"the run's status would outgrow what the apiserver stores ({exc.message}); "
                                  "keep step outputs and results well under 1 MiB, or store them elsewhere")
        for delay in (0.5, 1.0, 2.0, 4.0, 8.0):
            try:
                fresh = await self.kube.get(self._path)
                status = fresh.get("status") or {}
                if (status.get("worker"), status.get("attempt")) != (self.worker, self.attempt) or \
                        status.get("phase") not in api.HELD_PHASES:
                    return
                patch = let_go(fresh, self.worker, why, failure)
                await self.kube.merge_patch(self._path + "/status", {"status": patch}, _rv(fresh))
                self.obj, self.rv = fresh, _rv(fresh)
                reason = "Requeued" if patch["phase"] == api.QUEUED else str(patch["phase"])
                self._event(reason, f"{why}: {type(exc).__name__}: {exc}"[:1000], warning=True)
                return
            except NotFoundError:
                return
            except Exception as e:
                logger.warning("run %s: letting go failed (%r); retrying in %.1fs", self.name, e, delay)
                await asyncio.sleep(delay)
        logger.error("run %s: could not let go of the run; the operator re-queues it once this worker is gone",
                     self.name)
