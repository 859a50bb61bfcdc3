"""The public surface is pinned: changing it must be deliberate (update this list in the same change)."""

from __future__ import annotations

import importlib.resources

import kubestep
import kubestep.testing

PUBLIC = [
    "ChildCall",
    "ChildCancelledError",
    "ChildError",
    "ChildFailedError",
    "ChildHandle",
    "ChildLimitError",
    "ChildOutcome",
    "ChildTimedOutError",
    "ApiError",
    "ConfigurationError",
    "ConflictError",
    "EventTimeoutError",
    "Execution",
    "ExecutionCancelled",
    "ExecutionCancelledError",
    "ExecutionChange",
    "ExecutionFailedError",
    "ExecutionHandle",
    "ExecutionList",
    "ExecutionNotFoundError",
    "ExecutionStatus",
    "ForbiddenError",
    "GracePeriodExpired",
    "InvalidError",
    "InvalidInputError",
    "JournalError",
    "JournalRef",
    "KubestepClient",
    "KubestepError",
    "NotFoundError",
    "PostgresHistory",
    "ResultTimeoutError",
    "RetryPolicy",
    "RunEvent",
    "RunTimedOut",
    "Step",
    "StepRecord",
    "StepStoreUnreachableError",
    "StepTimeoutError",
    "Stop",
    "StopExecution",
    "TooLargeError",
    "TransportError",
    "Workflow",
    "WorkflowContext",
    "WorkflowDefinitionError",
    "workflow",
]


def test_the_public_names_are_exactly_these() -> None:
    assert sorted(kubestep.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert getattr(kubestep, name) is not None
    assert sorted(kubestep.testing.__all__) == ["InjectedFailure", "TestRun", "WorkflowEnvironment"]


def test_the_packages_say_they_are_typed() -> None:
    for package in ("kubestep", "kubestep_operator", "kubestep_server"):
        assert importlib.resources.files(package).joinpath("py.typed").is_file()
