"""What a worker does when it cannot go on with a run it holds, and the records it cannot send.

``let_go`` builds the status for letting go (pure; ``tests/unit/test_letting_go.py``), ``transient``
tells an error worth another attempt from one replay would only repeat, and ``Outage`` rides out an
apiserver restart for as long as the run stays this worker's."""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from collections.abc import Callable
from typing import Any

from .. import _protocol as api
from .._errors import ApiError, ConflictError, InvalidInputError, TooLargeError, TransportError
from .unwinding import Release


def let_go(
    obj: dict[str, Any], holder: str, why: str, failure: dict[str, Any] | None = None, *, audited: bool = False
) -> dict[str, Any]:
    """The status patch for a run its holder lets go of without finishing it.

    A run with a stop pending (told to stop, by the operator or by the user's irrevocable
    ``spec.cancelRequested``, or past its budget: ``api.pending_stop``) ends Cancelled, acknowledged
    by ``holder``; otherwise ``failure`` (an error that replay would only repeat) fails it, and
    anything else re-queues it to resume by replay, with what is left of its budget.
    """
    at = api.now()
    status, generation = obj.get("status") or {}, obj["metadata"].get("generation")
    stop = api.pending_stop(obj, at, audited)
    if stop is not None:
        return api.cancelled(
            status.get("conditions"),
            stop,
            by=holder,
            message=f"{why} while the run was stopping",
            at=at,
            generation=generation,
        )
    if failure is not None:
        message = f"{why}: {failure['type']}: {failure['message']}"
        return api.failed(status.get("conditions"), failure, api.Reason.WORKER_ERROR, message, at, generation)
    return api.requeued(
        api.Reason.REQUEUED,
        f"{why}; the run resumes by replay",
        at,
        deadline=api.parse_time(status.get("deadline")),
    )


def transient(exc: BaseException) -> bool:
    """Worth another attempt by replay (network, server or contention), unlike, say, a
    result too large for the object, which replay would only repeat."""
    if isinstance(exc, Release):
        return exc.cause is None or transient(exc.cause)
    if isinstance(exc, (TransportError, ConflictError)):
        return True
    if isinstance(exc, TooLargeError):
        return False
    return isinstance(exc, ApiError) and (exc.status_code >= 500 or exc.status_code == 429)


class Outage:
    """Rides out an apiserver that is restarting or overloaded (connection refused, 5xx, 429) for up
    to ``seconds`` (the worker uses three leases, at least 30 s), instead of letting go of the run at
    once: letting go would re-queue it, and replay would run the step in flight again although it
    finished. Nobody can take the run while the apiserver is down, the operator gives holders a lease
    after it sees again, and a write guarded by the holder (``test`` operations or the
    resourceVersion) that lands after the run was re-queued is refused, so waiting is safe. The chaos
    soak found this (``tests/chaos/soak.py``: steps run twice by one worker)."""

    def __init__(self, seconds: float) -> None:
        self.until = time.monotonic() + seconds
        self.delay = 0.1

    async def wait_out(self, exc: BaseException) -> None:
        """Returns after a pause if ``exc`` is worth another try within the bound; else re-raises."""
        if not transient(exc) or isinstance(exc, ConflictError) or time.monotonic() + self.delay > self.until:
            raise exc
        await asyncio.sleep(self.delay)
        self.delay = min(2.0, self.delay * 2)

    async def retrying(self, call: Callable[[], Any]) -> None:
        while True:
            try:
                await call()
                return
            except Exception as exc:
                await self.wait_out(exc)


def to_json(value: Any) -> Any:
    """What the apiserver will store of a step's output or a result: JSON, without NaN or infinities
    (which JSON cannot carry); anything else fails the step (or the run) with a clear error."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as e:
        raise InvalidInputError(f"the value returned is not JSON: {e}") from None


def error_record(exc: BaseException, step: str | None = None, with_traceback: bool = True) -> dict[str, Any]:
    err: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)[:4000]}
    if step is not None:
        err["step"] = step
    if with_traceback:
        err["traceback"] = "".join(traceback.format_exception(exc))[-8000:]
    return err
