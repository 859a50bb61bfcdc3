"""One execution of a step's function, and the records it leaves.

A step runs in a task of its own (async) or in a thread (sync, so the event loop, the watch and the
Lease renewals stay alive), so that a hard stop or the step's own timeout can cut it off while the
workflow's await on it is interrupted. An async step is cancelled at its current await; Python
cannot stop a thread, so a thread gets ``SETTLE_SECONDS`` to end on its own and is otherwise
abandoned (the worker then restarts itself to shed it: ``Worker.on_abandoned``)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import _protocol as api
from .letting_go import error_record, to_json

# After interrupting a step, how long to wait for it to end before calling it abandoned.
SETTLE_SECONDS = 0.5


class StepCall:
    """``fn(*args, **kwargs)`` started now, in a task or a thread."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.sync = not inspect.iscoroutinefunction(fn)
        self._thread_started, self._thread_done = threading.Event(), threading.Event()

        def in_thread() -> Any:
            self._thread_started.set()
            try:
                return fn(*args, **kwargs)
            finally:
                self._thread_done.set()

        self.future: asyncio.Future[Any] = asyncio.ensure_future(
            asyncio.to_thread(in_thread) if self.sync else fn(*args, **kwargs)
        )

    async def finished(self, timeout: float | None) -> bool:
        """Waits for the step; False if ``timeout`` ran out first. A cancel of the waiter (a hard
        stop) propagates and leaves the step running: call ``cut_off``."""
        done, _ = await asyncio.wait({self.future}, timeout=timeout)
        return bool(done)

    async def output(self) -> Any:
        """The step's return value as JSON (raises what the step raised, or ``InvalidInputError``)."""
        out = self.future.result()
        if inspect.isawaitable(out):
            out = await out
        return to_json(out)

    def cancel(self) -> None:
        self.future.cancel()

    async def cut_off(self, settle: float = SETTLE_SECONDS) -> bool:
        """Interrupts the step; True if it ended within ``settle`` seconds, False if it had to be
        abandoned (a thread that does not return, or a task that swallows its cancellation)."""
        self.future.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({self.future}, timeout=settle)
        if self.sync:
            deadline = time.monotonic() + settle
            while not self._thread_done.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            # A thread that never started (cut off before the executor ran it) never will.
            return self._thread_done.is_set() or not self._thread_started.is_set()
        return self.future.done()


def _record(key: str, started: dt.datetime, state: str, extra: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "key": key,
        "kind": "Run",
        "state": state,
        "startedAt": api.fmt_time(started),
        "finishedAt": api.fmt_time(api.now()),
        **fields,
        **extra,
    }


def completed(key: str, started: dt.datetime, output: Any, extra: dict[str, Any]) -> dict[str, Any]:
    return _record(key, started, api.StepState.COMPLETED, extra, output=output)


def failed(key: str, started: dt.datetime, exc: BaseException, extra: dict[str, Any]) -> dict[str, Any]:
    return _record(key, started, api.StepState.FAILED, extra, error=error_record(exc, with_traceback=False))


def interrupted(key: str, started: dt.datetime, why: str, message: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Not Completed: an interrupted step runs again on resume."""
    return _record(key, started, api.StepState.INTERRUPTED, extra, error={"type": why, "message": message})
