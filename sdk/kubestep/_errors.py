"""Named exceptions of the public API.

Two families live here. Client-side errors (``KubestepError`` and its
subclasses) are ordinary exceptions a caller catches around ``invoke`` or
``handle.result``. ``StopExecution`` and its subclasses are raised *inside*
workflow code at a step boundary; they derive from ``BaseException`` (like
``asyncio.CancelledError``) so that workflow code cannot swallow a
cancellation or a run timeout with ``except Exception``.
"""

from __future__ import annotations

from typing import Any


class KubestepError(Exception):
    """Base class of every error Kubestep raises to its callers."""


class ConfigurationError(KubestepError):
    """No usable kubeconfig or in-cluster configuration was found."""


class TransportError(KubestepError):
    """The apiserver could not be reached, or did not answer in time (a network error); worth a retry."""


class ApiError(KubestepError):
    """The Kubernetes API answered with an unexpected error."""

    def __init__(self, status_code: int, message: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.body = body


class NotFoundError(ApiError):
    """The object does not exist (HTTP 404)."""


class ConflictError(ApiError):
    """A write lost a race: the object changed since it was read (HTTP 409)."""


class ForbiddenError(ApiError):
    """RBAC denied the request (HTTP 403)."""


class InvalidError(ApiError):
    """The apiserver rejected the request (HTTP 422): the object failed schema or CEL validation, or a
    JSON patch did not apply to the object as it is now (``lost_race``)."""

    @property
    def lost_race(self) -> bool:
        """Whether this 422 is a JSON patch that did not apply, most often a ``test`` operation that
        failed because the object changed since it was read: a write guarded by ``test`` operations
        lost a race, as a 409 says for one guarded by the resourceVersion.

        The apiserver tells the two apart in its Status (checked against kube-apiserver 1.35). A patch
        that does not apply (a failed ``test``, a path the object lacks) gets a generic Status that
        names no object and gives no causes::

            {"kind": "Status", "status": "Failure", "reason": "Invalid", "code": 422, "details": {},
             "message": "the server rejected our request due to an error in our request"}

        A validation failure (schema, CEL rule) names the object and a cause per rule broken::

            {"kind": "Status", "status": "Failure", "reason": "Invalid", "code": 422,
             "message": "WorkflowExecution.kubestep.io \\"r\\" is invalid: status.phase: Unsupported value ...",
             "details": {"name": "r", "group": "kubestep.io", "kind": "WorkflowExecution",
                         "causes": [{"reason": "FieldValueNotSupported", "field": "status.phase", ...}]}}

        A malformed patch (an unknown operation) gets the first shape too; the writers build theirs."""
        return _patch_not_applied(self.body)


def _patch_not_applied(body: Any) -> bool:
    if not isinstance(body, dict) or body.get("kind") != "Status":
        return False  # not the apiserver's answer (a proxy's, say): nothing says a race was lost
    details = body.get("details") or {}
    if not isinstance(details, dict):
        return False
    return not (details.get("causes") or details.get("kind") or details.get("name"))


def lost_race(exc: BaseException) -> bool:
    """Whether a failed write lost a race (the object changed since it was read: decide or read
    again) rather than being refused for what it wrote: a 409, or a 422 from a JSON patch's failed
    ``test`` (``InvalidError.lost_race``). The one test both status writers, the operator's and the
    worker's, use."""
    return isinstance(exc, ConflictError) or (isinstance(exc, InvalidError) and exc.lost_race)


class TooLargeError(ApiError):
    """The object would outgrow what the apiserver or etcd stores (HTTP 413, or etcd's
    "request is too large"): retrying cannot help; keep outputs and results small."""


class JournalError(KubestepError):
    """An archived chunk of a run's step records is missing or does not match status.journal."""


class StepStoreUnreachableError(JournalError):
    """A run's records are in a step store this reader was not given (the Postgres store, without a
    DSN): nothing is wrong with the run; another reader, given the DSN, reads them."""


class InvalidInputError(KubestepError, ValueError):
    """A run's input or an event's data that cannot be stored: not JSON (NaN, infinities, objects
    JSON cannot encode), or larger than ``MAX_PAYLOAD_BYTES``. Raised before anything is sent."""


class ExecutionNotFoundError(KubestepError):
    """No WorkflowExecution has this id."""


class ExecutionFailedError(KubestepError):
    """The run ended ``Failed``; ``error`` holds the recorded error."""

    def __init__(self, execution_id: str, error: dict[str, Any] | None) -> None:
        err = error or {}
        super().__init__(f"execution {execution_id} failed: {err.get('type', 'Error')}: {err.get('message', '')}")
        self.execution_id = execution_id
        self.error = err


class ExecutionCancelledError(KubestepError):
    """The run ended ``Cancelled``; ``reason`` is ``Requested``, ``RunTimeout``, ``QueueTimeout`` or
    ``GracePeriodExpired`` (its step in flight was interrupted)."""

    def __init__(self, execution_id: str, reason: str | None, message: str | None = None) -> None:
        super().__init__(f"execution {execution_id} was cancelled ({reason}): {message or ''}".rstrip(": "))
        self.execution_id = execution_id
        self.reason = reason


class ResultTimeoutError(KubestepError, TimeoutError):
    """``handle.result(timeout=...)`` gave up before the run finished."""


class WorkflowDefinitionError(KubestepError):
    """A workflow or one of its steps is used incorrectly (e.g. a duplicate step key)."""


class ReplayMismatch(BaseException):
    """The workflow's code no longer matches the run's recorded history (it changed between attempts,
    or it branches on something other than its input and step outputs). The run ends Failed
    (reason ``ReplayMismatch``); not catchable by ``except Exception``, so no record is ever handed to
    the wrong step."""


class StopExecution(BaseException):
    """Raised at a step boundary to stop a run; not catchable by ``except Exception``."""


class ExecutionCancelled(StopExecution):
    """The run was cancelled (reason ``Requested``) while it ran."""


class RunTimedOut(StopExecution):
    """The current running segment exceeded ``runTimeoutSeconds`` (reason ``RunTimeout``)."""


class GracePeriodExpired(StopExecution):
    """The run was told to stop and its step in flight (or its cleanup) outlived the grace period
    (``spec.cancelGracePeriodSeconds``): the step was interrupted. Raised where the workflow awaited it;
    the run ends ``Cancelled`` with reason ``GracePeriodExpired``."""


class StepTimeoutError(KubestepError):
    """A step ran longer than its ``timeout`` and was interrupted (recorded ``Interrupted``). An
    ordinary exception: workflow code may catch it; uncaught, the run ends ``Failed``."""

    def __init__(self, key: str, timeout: float) -> None:
        super().__init__(f"step {key!r} did not finish within its timeout of {timeout:g} s; it was interrupted")
        self.key = key
        self.timeout = timeout


class EventTimeoutError(KubestepError):
    """``wait_for_event`` saw no event of its topic within its ``timeout``."""

    def __init__(self, key: str, topic: str, timeout: float | None) -> None:
        super().__init__(
            f"wait {key!r} received no event {topic!r} within {timeout:g} s"
            if timeout is not None
            else f"wait {key!r} received no event {topic!r}"
        )
        self.key = key
        self.topic = topic
        self.timeout = timeout


class ChildError(KubestepError):
    """A child run a parent waited for did not complete (``ctx.step.invoke_and_wait``,
    ``ChildOutcome.value()``); ``child`` is its id. Ordinary exceptions: the parent decides (catch
    them, or let the run fail); a child's cancel never cancels its parent."""

    def __init__(self, child: str, message: str) -> None:
        super().__init__(message)
        self.child = child


class ChildFailedError(ChildError):
    """The child run ended ``Failed``; ``error`` is its recorded error (type, message)."""

    def __init__(self, child: str, error: dict[str, Any] | None) -> None:
        err = error or {}
        super().__init__(child, f"child run {child} failed: {err.get('type', 'Error')}: {err.get('message', '')}")
        self.error = err


class ChildCancelledError(ChildError):
    """The child run ended ``Cancelled``: ``reason`` (``Requested``, ``RunTimeout``, ``QueueTimeout``,
    ``GracePeriodExpired``), ``message`` (the cancel's reason: a user's, or the cascade's naming the
    ancestor that stopped) and ``requested_by``."""

    def __init__(self, child: str, reason: str | None, message: str | None, requested_by: str | None) -> None:
        super().__init__(child, f"child run {child} was cancelled ({reason}): {message or ''}".rstrip(": "))
        self.reason, self.message, self.requested_by = reason, message, requested_by


class ChildTimedOutError(ChildCancelledError):
    """The child run spent its own budget (``runTimeoutSeconds``; reason ``RunTimeout``)."""


class ChildLimitError(KubestepError, ValueError):
    """A parent would start a child beyond the limits: deeper than ``MAX_DEPTH`` levels, or more than
    ``MAX_CHILDREN`` children in one run (``kubestep._protocol.family``)."""
