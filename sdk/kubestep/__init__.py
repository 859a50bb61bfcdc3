"""Kubestep: durable Python workflows on Kubernetes that can be cancelled and timed out safely.

from kubestep import workflow, WorkflowContext, KubestepClient

@workflow
async def risky_workflow(ctx: WorkflowContext, input: dict):
    data = await ctx.step.run("process", process_data, input)
    await ctx.step.wait_for("wait", hours=1)
    return await ctx.step.run("finalize", finalize_data, data)

async with KubestepClient(namespace="default") as client:
    handle = await risky_workflow.invoke(client, payload={...}, run_timeout_seconds=1800)
    cancelled = await client.cancel_execution(handle.id)
"""

from ._client import ExecutionChange, ExecutionHandle, KubestepClient, PostgresHistory
from ._context import ChildCall, ChildHandle, ChildOutcome, Step, Stop, WorkflowContext
from ._errors import (
    ApiError,
    ChildCancelledError,
    ChildError,
    ChildFailedError,
    ChildLimitError,
    ChildTimedOutError,
    ConfigurationError,
    ConflictError,
    EventTimeoutError,
    ExecutionCancelled,
    ExecutionCancelledError,
    ExecutionFailedError,
    ExecutionNotFoundError,
    ForbiddenError,
    GracePeriodExpired,
    InvalidError,
    InvalidInputError,
    JournalError,
    KubestepError,
    NotFoundError,
    ResultTimeoutError,
    RunTimedOut,
    StepStoreUnreachableError,
    StepTimeoutError,
    StopExecution,
    TooLargeError,
    TransportError,
    WorkflowDefinitionError,
)
from ._models import Execution, ExecutionList, ExecutionStatus, JournalRef, RunEvent, StepRecord
from ._retry import RetryPolicy
from ._workflow import Workflow, workflow

__all__ = [
    "ApiError",
    "ChildCall",
    "ChildCancelledError",
    "ChildError",
    "ChildFailedError",
    "ChildHandle",
    "ChildLimitError",
    "ChildOutcome",
    "ChildTimedOutError",
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
