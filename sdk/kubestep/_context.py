"""What workflow code sees: ``ctx.execution_id`` and the durable ``ctx.step`` API.

The context is a thin front over the worker's run (``_worker.running.Run``),
which owns replay, status recording and the step-boundary checks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._worker.running import Run


class Step:
    """Durable steps: outputs are recorded in status and replayed on resume."""

    def __init__(self, run: Run) -> None:
        self._run = run

    async def run(self, key: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Runs ``fn(*args, **kwargs)`` once per execution and returns its (JSON) output.

        On replay a completed step is not run again: its recorded output is
        returned. A cancellation or an exhausted run budget never interrupts
        the step in flight; it is raised at the boundary after the output is
        recorded. Synchronous functions run in a thread so the worker stays
        responsive while they do.
        """
        return await self._run.run_step(key, fn, args, kwargs)

    async def wait_for(
        self, key: str, *, seconds: float = 0, minutes: float = 0, hours: float = 0, days: float = 0
    ) -> None:
        """Durably waits: the worker is freed and the run resumes later, by replay.

        Waiting time does not count toward ``runTimeoutSeconds``, and the
        budget starts afresh when the run resumes.
        """
        duration = dt.timedelta(seconds=seconds, minutes=minutes, hours=hours, days=days)
        await self._run.wait(key, duration)


class WorkflowContext:
    """Passed to every workflow function as its first argument."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self.step = Step(run)

    @property
    def execution_id(self) -> str:
        return self._run.name

    @property
    def namespace(self) -> str:
        return self._run.namespace

    @property
    def workflow_id(self) -> str:
        return self._run.workflow.id

    @property
    def attempt(self) -> int:
        """How many running segments this run has had, this one included."""
        return self._run.attempt

    @property
    def cancel_requested(self) -> bool:
        """True once the run has been told to stop (it will stop at the next step boundary)."""
        return self._run.stop_reason is not None
