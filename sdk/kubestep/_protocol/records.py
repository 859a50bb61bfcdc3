"""Typed records of the resource as both writers see it (the CRD's schema is the authority:
``crds/workflowexecutions.kubestep.io.yaml``). ``total=False``: any field may be absent."""

from __future__ import annotations

from typing import Any, TypedDict


class Event(TypedDict, total=False):
    name: str  # unique in the run (the list is a map keyed by name, append-only)
    topic: str
    data: Any


class Spec(TypedDict, total=False):
    workflow: str
    input: Any
    runTimeoutSeconds: int  # running time per segment (reset by every wait)
    queueTimeoutSeconds: int
    cancelGracePeriodSeconds: int
    cancelRequested: bool  # irrevocable (CEL)
    cancelReason: str
    events: list[Event]


class Cancellation(TypedDict, total=False):
    reason: str  # StopReason
    message: str  # the user's spec.cancelReason
    requestedAt: str  # the cancel as first seen; a run timeout's deadline
    requestedBy: str  # field manager of the request that set spec.cancelRequested
    requestedByUser: str  # from the optional admission policy
    acknowledgedAt: str
    acknowledgedBy: str  # the worker that ended the run, or the operator


class Condition(TypedDict, total=False):
    type: str
    status: str  # "True" | "False"
    reason: str
    message: str
    lastTransitionTime: str
    observedGeneration: int


class StepRecord(TypedDict, total=False):
    key: str
    kind: str  # Run, Wait, Event
    state: str  # StepState
    startedAt: str
    finishedAt: str
    output: Any
    error: dict[str, Any]
    wakeAt: str
    topic: str
    event: str
    attempt: int  # a retried step's attempt (``_retry.py``)
    retryAt: str  # a failed attempt that is retried: when the next one is due


class WaitingFor(TypedDict, total=False):
    key: str
    topic: str


class Status(TypedDict, total=False):
    phase: str  # Phase
    reason: str  # Reason
    message: str
    worker: str | None
    attempt: int
    queuedAt: str
    startedAt: str
    finishedAt: str
    deadline: str | None  # end of the current running segment's budget
    budgetRemainingSeconds: float | None  # a segment's unspent budget while it is re-queued mid-run
    wakeAt: str | None
    waitingFor: WaitingFor | None
    cancellation: Cancellation
    steps: list[StepRecord]  # the latest records; older ones in journal
    journal: list[dict[str, Any]]  # archived chunks: {configMap, steps, level}
    stepsCompleted: int
    eventsConsumed: list[str]
    result: Any
    error: dict[str, Any]
    conditions: list[Condition]
    observedGeneration: int | None
