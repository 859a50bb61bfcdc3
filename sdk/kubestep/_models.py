"""Pydantic views of a WorkflowExecution, for the SDK's callers.

The worker and the operator build status patches as plain dicts (they must
round-trip unknown fields untouched); callers get these typed, validated views.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ._protocol import TERMINAL_PHASES

Phase = Literal["Queued", "Running", "Waiting", "Cancelling", "Completed", "Failed", "Cancelled"]


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class StepRecord(_Model):
    key: str
    kind: Literal["Run", "Wait", "Event"]
    #: ``Interrupted``: cut off by the end of the grace period or by its own timeout (it runs
    #: again if the run resumes).
    state: Literal["Running", "Waiting", "Completed", "Failed", "Interrupted"]
    started_at: dt.datetime | None = Field(None, alias="startedAt")
    finished_at: dt.datetime | None = Field(None, alias="finishedAt")
    wake_at: dt.datetime | None = Field(None, alias="wakeAt")
    output: Any = None
    error: dict[str, Any] | None = None
    #: Ran in ``ctx.cleanup()`` after the run was told to stop.
    cleanup: bool = False
    #: ``wait_for_event``: the topic, the name of the event received, or whether it timed out.
    topic: str | None = None
    event: str | None = None
    timed_out: bool = Field(False, alias="timedOut")


class JournalRef(_Model):
    """One ConfigMap of archived step records (see ``KubestepClient.step_history``)."""

    config_map: str = Field(alias="configMap")
    steps: int
    #: 0 for a chunk of fresh records; n+1 for a merge of chunks of level n.
    level: int = 0


class Cancellation(_Model):
    reason: Literal["Requested", "RunTimeout", "QueueTimeout"] | None = None
    #: The reason the user gave (``cancel_execution(id, reason=...)``, ``spec.cancelReason``).
    message: str | None = None
    #: Who asked: the field manager of the request that set ``spec.cancelRequested``
    #: (``kubestep-sdk``, ``kubestep-cli``, ``kubectl-patch`` ...), and the authenticated user
    #: where the cluster's admission policy records it.
    requested_by: str | None = Field(None, alias="requestedBy")
    requested_by_user: str | None = Field(None, alias="requestedByUser")
    requested_at: dt.datetime | None = Field(None, alias="requestedAt")
    acknowledged_at: dt.datetime | None = Field(None, alias="acknowledgedAt")
    acknowledged_by: str | None = Field(None, alias="acknowledgedBy")


class Condition(_Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: dt.datetime | None = Field(None, alias="lastTransitionTime")


class ExecutionStatus(_Model):
    phase: Phase | None = None
    reason: str | None = None
    message: str | None = None
    worker: str | None = None
    attempt: int = 0
    started_at: dt.datetime | None = Field(None, alias="startedAt")
    queued_at: dt.datetime | None = Field(None, alias="queuedAt")
    finished_at: dt.datetime | None = Field(None, alias="finishedAt")
    deadline: dt.datetime | None = None
    wake_at: dt.datetime | None = Field(None, alias="wakeAt")
    waiting_for: dict[str, str] | None = Field(None, alias="waitingFor")
    events_consumed: list[str] = Field([], alias="eventsConsumed")
    steps_completed: int = Field(0, alias="stepsCompleted")
    #: The most recent step records; older ones are archived (``journal``).
    steps: list[StepRecord] = []
    journal: list[JournalRef] = []
    result: Any = None
    error: dict[str, Any] | None = None
    cancellation: Cancellation | None = None
    conditions: list[Condition] = []
    observed_generation: int | None = Field(None, alias="observedGeneration")


class Execution(_Model):
    """One run, as the apiserver last reported it."""

    id: str
    namespace: str
    workflow: str
    input: Any = None
    run_timeout_seconds: int | None = None
    queue_timeout_seconds: int | None = None
    cancel_grace_period_seconds: int | None = None
    cancel_requested: bool = False
    cancel_reason: str | None = None
    events: list[dict[str, Any]] = []
    status: ExecutionStatus = ExecutionStatus()

    @property
    def finished(self) -> bool:
        return self.status.phase in TERMINAL_PHASES

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> Execution:
        spec = obj.get("spec", {})
        return cls(
            id=obj["metadata"]["name"],
            namespace=obj["metadata"]["namespace"],
            workflow=spec.get("workflow", ""),
            input=spec.get("input"),
            run_timeout_seconds=spec.get("runTimeoutSeconds"),
            queue_timeout_seconds=spec.get("queueTimeoutSeconds"),
            cancel_grace_period_seconds=spec.get("cancelGracePeriodSeconds"),
            cancel_requested=bool(spec.get("cancelRequested", False)),
            cancel_reason=spec.get("cancelReason"),
            events=list(spec.get("events") or []),
            status=ExecutionStatus.model_validate(obj.get("status") or {}),
        )
