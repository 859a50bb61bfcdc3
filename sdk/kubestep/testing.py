"""Test your own workflows without a cluster: an in-memory runtime with durable-step semantics.

``WorkflowEnvironment`` runs a ``@workflow`` the way a worker would, through the same
``WorkflowContext``, but keeps the run's record in memory (the model is Temporal's
``temporalio.testing.WorkflowEnvironment`` with time skipping):

* every step's output is recorded; a wait ends the running segment and the workflow is run again from
  the top, replaying recorded steps (a step that completed is never run twice), so non-deterministic
  workflow code shows up as it would on a cluster;
* waits skip time: ``wait_for`` and ``wait_for_event`` timeouts advance a virtual clock at once;
* a cancel or an exhausted budget can be injected at any step boundary (before a named step, or after a
  number of steps), a step can be made to hang past the grace period, and events can be queued for
  ``wait_for_event``;
* step retries follow their policy (``fail_attempts`` makes attempts fail without running), each
  backoff a wait that skips time;
* child runs (``ctx.step.invoke``) run in the same environment, on its clock, when first waited for;
  ``WorkflowEnvironment(child_plans={"invoking key": {"cancel_before": ...}})`` injects a stop or a
  failure into a child, and the parent sees it as it would on a cluster (``ChildCancelledError``, ...).

    from kubestep.testing import WorkflowEnvironment

    env = WorkflowEnvironment()
    run = await env.run(my_workflow, {"x": 1}, cancel_before="charge")
    assert run.phase == "Cancelled" and "charge" not in run.completed_steps()

What it does not model: the apiserver, workers and leases (use the local control plane for those:
``kubestep dev up``), and real time: a step's own duration is real, and the grace period is not
(``hard_stop_at`` interrupts the named step at once, as the end of the grace period would). Children
run one after another, not beside their parent, and the operator's cascade (a parent's stop cancelling
its unfinished children) is not modelled: a child never waited for never runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import inspect
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

from . import _protocol as api
from ._context import ChildCall, Stop, WorkflowContext
from ._errors import (
    ChildLimitError,
    EventTimeoutError,
    ExecutionCancelled,
    GracePeriodExpired,
    ReplayMismatch,
    RunTimedOut,
    StepTimeoutError,
    StopExecution,
    WorkflowDefinitionError,
)
from ._protocol import family
from ._retry import ATTEMPT_SEP, Decide, RetryScheduled
from ._workflow import Workflow, registered

__all__ = ["InjectedFailure", "TestRun", "WorkflowEnvironment"]

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@dataclasses.dataclass
class TestRun:
    """How a run ended, with its whole step record."""

    __test__ = False  # not a pytest test class

    phase: str  # Completed, Failed, Cancelled
    reason: str  # Succeeded, WorkflowError, Requested, RunTimeout, GracePeriodExpired
    result: Any = None
    error: BaseException | None = None
    steps: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    segments: int = 1  # running segments: one more after every wait
    clock: dt.datetime = START  # the virtual time when it ended

    def completed_steps(self) -> list[str]:
        return [s["key"] for s in self.steps if s["state"] == api.StepState.COMPLETED and s["kind"] == "Run"]

    def step(self, key: str) -> dict[str, Any]:
        return next(s for s in self.steps if s["key"] == key)


class InjectedFailure(Exception):
    """What a step raises instead of running when ``fail_attempts`` says this attempt fails."""


class _Suspended(BaseException):
    def __init__(self, key: str, wake: dt.datetime | None, topic: str | None) -> None:
        self.key, self.wake, self.topic = key, wake, topic


class _Plan:
    """What the test injects, checked at every step boundary."""

    def __init__(
        self,
        cancel_before: str | None,
        cancel_after_steps: int | None,
        timeout_before: str | None,
        timeout_after_steps: int | None,
        hard_stop_at: str | None,
        reason: str | None,
        fail_attempts: dict[str, int] | None = None,
    ) -> None:
        self.cancel_before, self.cancel_after_steps = cancel_before, cancel_after_steps
        self.timeout_before, self.timeout_after_steps = timeout_before, timeout_after_steps
        self.hard_stop_at, self.reason = hard_stop_at, reason
        self.fail_attempts = dict(fail_attempts or {})


class _MemoryRun:
    """The ``_Runtime`` the context talks to: one run's record, across segments."""

    def __init__(self, env: WorkflowEnvironment, workflow: Workflow, plan: _Plan) -> None:
        self.env, self.workflow, self.plan = env, workflow, plan
        self.name = f"{workflow.id}-test"
        self.namespace = "test"
        self.attempt = 0
        self.records: dict[str, dict[str, Any]] = {}  # by key, in insertion order
        self.consumed: list[str] = []
        self.stop: Stop | None = None
        self.hard = False
        self._seen: set[str] = set()
        self.replay = api.replay.Replay([])
        self._cleanup = 0
        self._ran = 0  # steps completed in this run (for "after N steps")
        self.depth = 0  # levels below its root (a child run's is its parent's + 1)

    # ----- _Runtime ---------------------------------------------------------------------------

    @property
    def workflow_id(self) -> str:
        return self.workflow.id

    def stop_info(self) -> Stop | None:
        return self.stop

    @contextlib.asynccontextmanager
    async def cleanup(self) -> AsyncIterator[None]:
        self._cleanup += 1
        try:
            yield
        finally:
            self._cleanup -= 1

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
        self._boundary(key)
        rec = await self._recorded(key, "Run")
        if rec is not None and rec["state"] == api.StepState.COMPLETED:
            return rec.get("output")
        if rec is not None and rec.get("retryAt") and rec["state"] in (api.StepState.FAILED, api.StepState.INTERRUPTED):
            due = api.parse_time(rec["retryAt"])
            raise RetryScheduled(0 if due is None else (due - self.env.now()).total_seconds())
        started = self.env.now()
        fields: dict[str, Any] = {"attempt": attempt} if attempt is not None else {}
        step = key.split(ATTEMPT_SEP)[0]
        if self.plan.fail_attempts.get(step, 0) >= (attempt or 1):
            self._fail(
                key, started, InjectedFailure(f"attempt {attempt or 1} of {step!r} failed (injected)"), retry, fields
            )
        if self.plan.hard_stop_at == key and self.stop is None:
            self._note(api.StopReason.REQUESTED, self.plan.reason)
        if self.plan.hard_stop_at == key:
            self.hard = True
            self.stop = dataclasses.replace(self.stop, grace_expired=True) if self.stop else None
            self._record(
                key,
                "Run",
                api.StepState.INTERRUPTED,
                started,
                error={"type": api.Reason.GRACE_EXPIRED, "message": "the grace period ran out (injected)"},
            )
            raise GracePeriodExpired(f"step {key!r} was interrupted: the grace period ran out")
        call = fn(*args, **kwargs) if inspect.iscoroutinefunction(fn) else asyncio.to_thread(fn, *args, **kwargs)
        try:
            out = await asyncio.wait_for(call, timeout)
            if inspect.isawaitable(out):
                out = await out
            output = json.loads(json.dumps(out))
        except TimeoutError:
            timed_out = StepTimeoutError(key, timeout or 0)
            delay = retry(timed_out) if retry is not None else None
            self._record(
                key,
                "Run",
                api.StepState.INTERRUPTED,
                started,
                error={"type": "StepTimeout", "message": f"did not finish within {timeout:g} s"},
                **fields,
                **self._retry_at(delay),
            )
            if delay is not None:
                raise RetryScheduled(delay, timed_out) from None
            raise timed_out from None
        except Exception as exc:
            self._fail(key, started, exc, retry, fields)
        self._record(key, "Run", api.StepState.COMPLETED, started, output=output, **fields)
        self._ran += 1
        self._boundary(None)
        return output

    async def wait(self, key: str, duration: dt.timedelta) -> None:
        self._boundary(key)
        rec = await self._recorded(key, "Wait")
        if rec is not None:
            if rec["state"] != api.StepState.COMPLETED:
                rec.update(state=api.StepState.COMPLETED, finishedAt=api.fmt_time(self.env.now()))
            return
        wake = self.env.now() + duration
        self._record(key, "Wait", api.StepState.WAITING, self.env.now(), wakeAt=api.fmt_time(wake))
        raise _Suspended(key, wake, None)

    async def wait_event(self, key: str, topic: str, timeout: float | None) -> Any:
        self._boundary(key)
        rec = await self._recorded(key, "Event")
        if rec is not None and rec["state"] == api.StepState.COMPLETED:
            if rec.get("timedOut"):
                raise EventTimeoutError(key, topic, timeout)
            return rec.get("output")
        event = next((e for e in self.env.events if e["topic"] == topic and e["name"] not in self.consumed), None)
        if event is not None:
            self.consumed.append(event["name"])
            self._record(
                key,
                "Event",
                api.StepState.COMPLETED,
                self.env.now(),
                topic=topic,
                event=event["name"],
                output=event.get("data"),
            )
            return event.get("data")
        if rec is not None:  # resumed with no event: its timeout passed
            rec.update(state=api.StepState.COMPLETED, timedOut=True, finishedAt=api.fmt_time(self.env.now()))
            raise EventTimeoutError(key, topic, timeout)
        wake = self.env.now() + dt.timedelta(seconds=timeout) if timeout is not None else None
        self._record(
            key,
            "Event",
            api.StepState.WAITING,
            self.env.now(),
            topic=topic,
            **({"wakeAt": api.fmt_time(wake)} if wake else {}),
        )
        raise _Suspended(key, wake, topic)

    def _retry_at(self, delay: float | None) -> dict[str, Any]:
        return {} if delay is None else {"retryAt": api.fmt_time(self.env.now() + dt.timedelta(seconds=delay))}

    def _fail(
        self, key: str, started: dt.datetime, exc: Exception, retry: Decide | None, fields: dict[str, Any]
    ) -> NoReturn:
        """Records a failed attempt (when the next is due, if ``retry`` retries it) and raises."""
        delay = retry(exc) if retry is not None else None
        error = {"type": type(exc).__name__, "message": str(exc)}
        self._record(key, "Run", api.StepState.FAILED, started, error=error, **fields, **self._retry_at(delay))
        if delay is not None:
            raise RetryScheduled(delay, exc) from exc
        raise exc

    # ----- child runs: run in this environment, on its clock, when first waited for --------------

    async def start_children(self, key: str, calls: list[ChildCall]) -> list[dict[str, Any]]:
        registry = registered()

        def create() -> list[dict[str, Any]]:
            if self.depth + 1 > family.MAX_DEPTH:
                raise ChildLimitError(f"step {key!r} would start a child run {self.depth + 1} levels below its root")
            out = []
            for i, call in enumerate(calls):
                if call.workflow not in registry:
                    raise WorkflowDefinitionError(f"no workflow {call.workflow!r} is registered (import its module)")
                child = f"{self.name}-{key if len(calls) == 1 else f'{key}/{i}'}"
                self.env.children.setdefault(child, (call, key, self.depth + 1))
                out.append({"id": child, "workflow": call.workflow})
            return out

        out: list[dict[str, Any]] = await self.run_step(key, create, (), {})
        return out

    async def wait_children(self, key: str, ids: list[str]) -> list[dict[str, Any]]:
        self._boundary(key)
        rec = await self._recorded(key, "Wait")
        if rec is not None and rec["state"] == api.StepState.COMPLETED:
            return list(rec.get("output") or [])
        started = self.env.now()
        outcomes = [await self.env.child_outcome(child) for child in ids]
        self._record(key, "Wait", api.StepState.COMPLETED, started, output=outcomes)
        self._boundary(None)
        return outcomes

    # ----- the rules ----------------------------------------------------------------------------

    def _note(self, reason: str, message: str | None) -> None:
        if self.stop is None:
            self.stop = Stop(reason, False, message, "kubestep.testing")

    def _boundary(self, next_key: str | None) -> None:
        p = self.plan
        if self.stop is None:
            if (next_key is not None and next_key == p.cancel_before) or (
                p.cancel_after_steps is not None and self._ran >= p.cancel_after_steps
            ):
                self._note(api.StopReason.REQUESTED, p.reason)
            elif (next_key is not None and next_key == p.timeout_before) or (
                p.timeout_after_steps is not None and self._ran >= p.timeout_after_steps
            ):
                self._note(api.StopReason.RUN_TIMEOUT, None)
        if self.stop is None or (self._cleanup and not self.hard):
            return
        if self.hard:
            raise GracePeriodExpired("the grace period ran out")
        if self.stop.reason == api.StopReason.RUN_TIMEOUT:
            raise RunTimedOut(f"execution {self.name} exceeded its run timeout")
        raise ExecutionCancelled(f"execution {self.name} was cancelled")

    async def _recorded(self, key: str, kind: str) -> dict[str, Any] | None:
        """As the worker does: the record replay hands to this call, under the replay rule
        (``_protocol/replay.py``), so a workflow's own tests catch non-determinism."""
        if key in self._seen:
            raise WorkflowDefinitionError(f"step key {key!r} is used twice in one execution")
        self._seen.add(key)
        what = f"{api.replay.VERBS[kind]} {key!r}"
        rec = self.records.get(key)
        if rec is not None:
            self.replay.reach(key, kind, rec, what)
        else:
            await api.replay.before_new_step(self.replay, what)
        return rec

    def _record(self, key: str, kind: str, state: str, started: dt.datetime, **fields: Any) -> None:
        rec = {"key": key, "kind": kind, "state": state, "startedAt": api.fmt_time(started), **fields}
        if state != api.StepState.WAITING:
            rec["finishedAt"] = api.fmt_time(self.env.now())
        if self._cleanup and self.stop is not None:
            rec["cleanup"] = True
        self.records.pop(key, None)
        self.records[key] = rec


class WorkflowEnvironment:
    """Runs workflows in memory, with a virtual clock that waits advance."""

    def __init__(self, start: dt.datetime = START, child_plans: dict[str, dict[str, Any]] | None = None) -> None:
        self._now = start
        self.events: list[dict[str, Any]] = []
        # Child runs started by ``ctx.step.invoke``: by id, (call, invoking key, depth); run when first
        # waited for, with ``child_plans[invoking key]`` as their ``run()`` keywords (to cancel or fail one).
        self.children: dict[str, tuple[ChildCall, str, int]] = {}
        self.child_plans = dict(child_plans or {})
        self.child_runs: dict[str, TestRun] = {}

    async def child_outcome(self, child: str) -> dict[str, Any]:
        """How child ``child`` ended (``family.outcome``), running it first if it has not run."""
        if child not in self.child_runs:
            call, key, depth = self.children[child]
            self.child_runs[child] = await self.run(
                registered()[call.workflow], call.payload, _name=child, _depth=depth, **self.child_plans.get(key, {})
            )
        run = self.child_runs[child]
        out: dict[str, Any] = {"id": child, "phase": run.phase, "reason": run.reason}
        if run.phase == api.Phase.COMPLETED:
            out["result"] = run.result
        elif run.phase == api.Phase.FAILED:
            out["error"] = {"type": type(run.error).__name__, "message": str(run.error)}
        else:
            out["stop"] = {"reason": run.reason, "message": self.child_plans.get(key, {}).get("reason")}
        return out

    def now(self) -> dt.datetime:
        return self._now

    def send_event(self, topic: str, data: Any = None, name: str | None = None) -> str:
        """Queues an event for the next ``wait_for_event`` of ``topic`` (before or during a run)."""
        name = name or f"{topic}-{len(self.events)}"
        if any(e["name"] == name for e in self.events):
            raise ValueError(f"an event named {name!r} was already sent")
        self.events.append({"name": name, "topic": topic, "data": data})
        return name

    async def run(
        self,
        workflow: Workflow,
        payload: Any = None,
        *,
        cancel_before: str | None = None,
        cancel_after_steps: int | None = None,
        timeout_before: str | None = None,
        timeout_after_steps: int | None = None,
        hard_stop_at: str | None = None,
        reason: str | None = None,
        fail_attempts: dict[str, int] | None = None,
        max_segments: int = 1000,
        _name: str | None = None,
        _depth: int = 0,
    ) -> TestRun:
        """Runs ``workflow`` to its end. A cancel (``cancel_before`` a step key, or after
        ``cancel_after_steps`` completed steps, with the user's ``reason``) or an exhausted budget
        (``timeout_before`` / ``timeout_after_steps``) is raised at that boundary; ``hard_stop_at``
        cancels the run and interrupts that step as the end of the grace period would.
        ``fail_attempts={"charge": 2}`` makes the first two attempts of step ``charge`` raise
        ``InjectedFailure`` without running it (a retried step's backoffs skip time like any wait;
        ``cancel_before="charge~backoff-1"`` cancels during the first backoff)."""
        plan = _Plan(
            cancel_before, cancel_after_steps, timeout_before, timeout_after_steps, hard_stop_at, reason, fail_attempts
        )
        run = _MemoryRun(self, workflow, plan)
        run.name, run.depth = _name or run.name, _depth
        for segment in range(1, max_segments + 1):
            run.attempt, run._seen = segment, set()
            run.replay = api.replay.Replay(run.records.values())
            try:
                result = await workflow.fn(WorkflowContext(run), payload)
                run._boundary(None)  # returning is a boundary too
                mismatch = run.replay.mismatch("returns")
                if mismatch is not None:
                    raise mismatch
                return self._ended(
                    run, api.Phase.COMPLETED, api.Reason.SUCCEEDED, segment, result=json.loads(json.dumps(result))
                )
            except _Suspended as s:
                if s.topic is not None and any(
                    e["topic"] == s.topic and e["name"] not in run.consumed for e in self.events
                ):
                    continue  # its event is already here: resume at once
                if s.wake is None:
                    raise RuntimeError(
                        f"the run waits for event {s.topic!r} with no timeout, and none was sent: "
                        "send it with env.send_event() before run()"
                    ) from None
                self._now = max(self._now, s.wake)  # time skipping
            except ReplayMismatch as e:
                return self._ended(run, api.Phase.FAILED, api.Reason.REPLAY_MISMATCH, segment, error=e)
            except StopExecution as e:
                reason_ = (
                    api.Reason.GRACE_EXPIRED
                    if run.hard
                    else (run.stop.reason if run.stop else api.StopReason.REQUESTED)
                )
                return self._ended(run, api.Phase.CANCELLED, reason_, segment, error=e)
            except Exception as e:
                if run.stop is not None:
                    return self._ended(run, api.Phase.CANCELLED, run.stop.reason, segment, error=e)
                return self._ended(run, api.Phase.FAILED, api.Reason.WORKFLOW_ERROR, segment, error=e)
        raise RuntimeError(f"the run did not end within {max_segments} segments")

    def _ended(
        self,
        run: _MemoryRun,
        phase: str,
        reason: str,
        segments: int,
        *,
        result: Any = None,
        error: BaseException | None = None,
    ) -> TestRun:
        return TestRun(phase, reason, result, error, list(run.records.values()), segments, self._now)
