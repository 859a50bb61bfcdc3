"""What workflow code sees: ``ctx.execution_id``, the durable ``ctx.step`` API, and stopping.

The context is a thin front over a ``_Runtime``: the worker's run implements it (replay, status
recording, step boundaries, the grace period), and so can a test double, so this module imports
nothing of the worker (the model is Temporal's ``temporalio.workflow._Runtime``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from . import _retry
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

    async def wait_event(self, key: str, topic: str, timeout: float | None) -> Any: ...


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
