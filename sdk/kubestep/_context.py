"""What workflow code sees: ``ctx.execution_id``, the durable ``ctx.step`` API, and stopping.

The context is a thin front over a ``_Runtime``: the worker's run implements it (replay, status
recording, step boundaries, the grace period), and so can a test double, so this module imports
nothing of the worker (the model is Temporal's ``temporalio.workflow._Runtime``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from . import _retry
from ._errors import ChildCancelledError, ChildFailedError, ChildLimitError, ChildTimedOutError
from ._protocol.family import MAX_CHILDREN
from ._retry import RetryPolicy, RetryScheduled


class _Runtime(Protocol):
    """What a context needs of whatever executes the workflow."""

    name: str
    namespace: str
    attempt: int

    @property
    def workflow_id(self) -> str: ...

    def stop_info(self) -> Stop | None: ...

    def cleanup(self) -> AbstractAsyncContextManager[None]: ...

    async def run_step(
        self,
        key: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None = None,
        attempt: int | None = None,
        retry: _retry.Decide | None = None,
    ) -> Any:
        """Runs one step (one attempt of a retried one). With ``retry``, a failed attempt asks it for the
        backoff before the next one: if it gives one, the record says when the next attempt is due
        (``retryAt``) and ``RetryScheduled`` is raised instead of the error, now and on replay."""
        ...

    async def wait(self, key: str, duration: dt.timedelta) -> None: ...

    async def start_children(self, key: str, calls: list[ChildCall]) -> list[dict[str, Any]]:
        """A step that creates the child runs (each ``{"id", "workflow"}``, recorded as its output:
        a replay returns the same children and creates none)."""
        ...

    async def wait_children(self, key: str, ids: list[str]) -> list[dict[str, Any]]:
        """A durable wait until every child in ``ids`` has ended; their outcomes (``family.outcome``)."""
        ...

    async def wait_event(self, key: str, topic: str, timeout: float | None) -> Any: ...


@dataclasses.dataclass(frozen=True)
class ChildCall:
    """One child run to start: its workflow, input and options (``Step.invoke``)."""

    workflow: str
    payload: Any = None
    run_timeout_seconds: int | None = None  # None: the parent's (see ``_protocol/family.py``)
    queue: str | None = None  # None: the parent's


@dataclasses.dataclass(frozen=True)
class ChildHandle:
    """A child run a workflow started (``ctx.step.invoke``): its id, a WorkflowExecution's name."""

    id: str
    workflow: str


@dataclasses.dataclass(frozen=True)
class ChildOutcome:
    """How a child run ended, as its parent recorded it (``ctx.step.wait_children``)."""

    id: str
    phase: str  # Completed, Failed or Cancelled
    reason: str | None = None
    result: Any = None  # Completed: its result
    error: dict[str, Any] | None = None  # Failed: its recorded error
    stop: dict[str, Any] | None = None  # Cancelled: reason, message, requestedBy

    @classmethod
    def of(cls, raw: dict[str, Any]) -> ChildOutcome:
        return cls(
            str(raw.get("id")),
            str(raw.get("phase")),
            raw.get("reason"),
            raw.get("result"),
            raw.get("error"),
            raw.get("stop"),
        )

    def value(self) -> Any:
        """The child's result, or its ending as a typed error: ``ChildFailedError``,
        ``ChildTimedOutError`` (its own budget ran out) or ``ChildCancelledError``."""
        if self.phase == "Completed":
            return self.result
        if self.phase == "Failed":
            raise ChildFailedError(self.id, self.error)
        stop = self.stop or {}
        error = ChildTimedOutError if stop.get("reason") == "RunTimeout" else ChildCancelledError
        raise error(self.id, stop.get("reason") or self.reason, stop.get("message"), stop.get("requestedBy"))


@dataclasses.dataclass(frozen=True)
class Stop:
    """Why a run was told to stop, as its cleanup code sees it (``ctx.stop``)."""

    reason: str  # "Requested" (a user's cancel) or "RunTimeout" (its budget ran out)
    grace_expired: bool  # the grace period ran out: a step (or the cleanup) was interrupted
    message: str | None = None  # the reason the user gave (``cancel_execution(id, reason=...)``)
    requested_by: str | None = None  # who asked: a field manager, or the user where the cluster records it


class Step:
    """Durable steps: outputs are recorded in status and replayed on resume."""

    def __init__(self, runtime: _Runtime) -> None:
        self._runtime = runtime
        self._children = 0  # children started so far (replayed invokes count: the count is the same)

    async def run(
        self,
        key: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        max_retries: int | None = None,
        base_delay: float | None = None,
        max_delay: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """Runs ``fn(*args, **kwargs)`` once per execution and returns its (JSON) output.

        On replay a completed step is not run again: its recorded output is returned. A cancel
        or an exhausted run budget does not interrupt the step in flight: it gets the run's
        grace period (``spec.cancelGracePeriodSeconds``) to finish, its output is recorded, and
        the stop is raised at the boundary after it. A step still running when the grace period
        ends is interrupted: an async step is cancelled at its current await, a synchronous one
        (run in a thread, so the worker stays responsive) is abandoned and the worker restarts
        itself. ``timeout`` (seconds) interrupts the step the same way and raises
        ``StepTimeoutError``.

        ``retry=RetryPolicy(...)`` (or Polos's ``max_retries=``, ``base_delay=``, ``max_delay=``)
        tries a failed step again: each attempt is its own record (``key~attempt-N``), ``timeout``
        applies to each, and the backoff between two is a durable wait (``key~backoff-N``: the
        worker is freed, the budget does not run, and a cancel or a timeout meanwhile ends the run
        with no further attempt). When the attempts run out, the last error is raised.

        (To pass a keyword argument named ``timeout``, ``retry``, ``max_retries``, ``base_delay``
        or ``max_delay`` to ``fn``, bind it with ``functools.partial``.)
        """
        policy = _retry.resolve(retry, max_retries, base_delay, max_delay)
        if policy is None:
            return await self._runtime.run_step(key, fn, args, kwargs, timeout)
        attempt = 1
        while True:

            def decide(exc: BaseException, n: int = attempt) -> float | None:
                # Nothing is retried once the run is told to stop: a retry never outlives a stop.
                return None if self._runtime.stop_info() is not None else policy.next_delay(exc, n)

            try:
                return await self._runtime.run_step(
                    _retry.attempt_key(key, attempt), fn, args, kwargs, timeout, attempt, decide
                )
            except RetryScheduled as scheduled:
                if policy.delay(attempt) > 0:
                    # On replay the wait is recorded (done, or due when the run resumed) and returns;
                    # otherwise the run waits out what is left until the recorded retryAt.
                    await self._runtime.wait(_retry.backoff_key(key, attempt), dt.timedelta(seconds=scheduled.seconds))
            attempt += 1

    # ----- child runs ---------------------------------------------------------------------------

    async def invoke(
        self,
        key: str,
        workflow: str,
        payload: Any = None,
        *,
        run_timeout_seconds: int | None = None,
        queue: str | None = None,
    ) -> ChildHandle:
        """Starts a child run of ``workflow`` (a step: recorded, never started twice on replay) and
        returns its handle. The child is a WorkflowExecution owned by this run (deleted with it),
        labelled with its parent, root and depth; it inherits this run's ``runTimeoutSeconds`` (unless
        ``run_timeout_seconds`` is given), grace period and queue. When this run is cancelled, times
        out or ends, the operator cancels every unfinished child (and theirs, down the tree)."""
        (handle,) = await self.batch_invoke(key, [ChildCall(workflow, payload, run_timeout_seconds, queue)])
        return handle

    async def batch_invoke(self, key: str, calls: Sequence[ChildCall]) -> list[ChildHandle]:
        """Starts several child runs in one step (a fan-out): ``[ChildCall(workflow, payload), ...]``."""
        calls = list(calls)
        if not calls or not all(isinstance(c, ChildCall) for c in calls):
            raise TypeError("batch_invoke takes a non-empty list of ChildCall(workflow, payload, ...)")
        if self._children + len(calls) > MAX_CHILDREN:
            raise ChildLimitError(
                f"step {key!r} would start child run {self._children + len(calls)} of this run; "
                f"a run starts at most {MAX_CHILDREN}"
            )
        started = await self._runtime.start_children(key, calls)
        self._children += len(started)
        return [ChildHandle(str(c["id"]), str(c["workflow"])) for c in started]

    async def wait_children(self, key: str, children: Sequence[ChildHandle]) -> list[ChildOutcome]:
        """Durably waits until every child in ``children`` has ended (the worker is freed and this
        run's budget does not run, as in ``wait_for``) and returns how each ended, in order; it
        raises nothing for a child that failed or was cancelled: ``outcome.value()`` does."""
        handles = list(children)
        if not handles:
            return []
        raw = await self._runtime.wait_children(key, [h.id for h in handles])
        return [ChildOutcome.of(o) for o in raw]

    async def invoke_and_wait(
        self,
        key: str,
        workflow: str,
        payload: Any = None,
        *,
        run_timeout_seconds: int | None = None,
        queue: str | None = None,
    ) -> Any:
        """``invoke``, then a durable wait for the child (``key~wait``): its result, or its ending as
        ``ChildFailedError``, ``ChildTimedOutError`` or ``ChildCancelledError``."""
        handle = await self.invoke(key, workflow, payload, run_timeout_seconds=run_timeout_seconds, queue=queue)
        (outcome,) = await self.wait_children(f"{key}~wait", [handle])
        return outcome.value()

    async def batch_invoke_and_wait(self, key: str, calls: Sequence[ChildCall]) -> list[ChildOutcome]:
        """``batch_invoke``, then a durable wait for all of them (``key~wait``)."""
        handles = await self.batch_invoke(key, calls)
        return await self.wait_children(f"{key}~wait", handles)

    async def wait_for(
        self, key: str, *, seconds: float = 0, minutes: float = 0, hours: float = 0, days: float = 0
    ) -> None:
        """Durably waits: the worker is freed and the run resumes later, by replay.

        Waiting time does not count toward ``runTimeoutSeconds``, and the
        budget starts afresh when the run resumes.
        """
        duration = dt.timedelta(seconds=seconds, minutes=minutes, hours=hours, days=days)
        await self._runtime.wait(key, duration)

    async def wait_for_event(self, key: str, topic: str, *, timeout: float | None = None) -> Any:
        """Durably waits for the next event of ``topic`` sent to this run and returns its data.

        Send one with ``client.send_event(id, topic, data)`` or ``kubectl patch --type json``
        (``docs/events.md``). Each event is delivered to exactly one wait, in the order sent,
        and replayed on resume; one sent before the wait is reached is kept for it. While it
        waits the run frees its worker and its budget does not run. ``timeout`` (seconds):
        raise ``EventTimeoutError`` if no event came by then.
        """
        return await self._runtime.wait_event(key, topic, timeout)


class WorkflowContext:
    """Passed to every workflow function as its first argument."""

    def __init__(self, runtime: _Runtime) -> None:
        self._runtime = runtime
        self.step = Step(runtime)

    @property
    def execution_id(self) -> str:
        return self._runtime.name

    @property
    def namespace(self) -> str:
        return self._runtime.namespace

    @property
    def workflow_id(self) -> str:
        return self._runtime.workflow_id

    @property
    def attempt(self) -> int:
        """How many running segments this run has had, this one included."""
        return self._runtime.attempt

    @property
    def cancel_requested(self) -> bool:
        """True once the run has been told to stop (it will stop at the next step boundary)."""
        return self._runtime.stop_info() is not None

    @property
    def stop(self) -> Stop | None:
        """Why the run is stopping, for cleanup code; None while it is not."""
        return self._runtime.stop_info()

    def cleanup(self) -> AbstractAsyncContextManager[None]:
        """A scope whose steps run although the run is stopping, within its grace period::

            try:
                await ctx.step.run("work", work, job)
            finally:
                if ctx.stop:
                    async with ctx.cleanup():
                        await ctx.step.run("release", release, job)

        Steps in it are recorded (``cleanup: true``) like any other. When the grace period
        runs out they are interrupted too, and ``ctx.stop.grace_expired`` is then True.
        """
        return self._runtime.cleanup()
