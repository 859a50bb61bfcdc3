"""Pydantic views of a WorkflowExecution, for the SDK's callers.

The worker and the operator build status patches as plain dicts (they must
round-trip unknown fields untouched); callers get these typed, validated views.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ._api import TERMINAL_PHASES

Phase = Literal["Queued", "Running", "Waiting", "Cancelling", "Completed", "Failed", "Cancelled"]


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class StepRecord(_Model):
    key: str
    kind: Literal["Run", "Wait"]
    state: Literal["Running", "Waiting", "Completed", "Failed"]
    started_at: dt.datetime | None = Field(None, alias="startedAt")
    finished_at: dt.datetime | None = Field(None, alias="finishedAt")
    wake_at: dt.datetime | None = Field(None, alias="wakeAt")
    output: Any = None
    error: dict[str, Any] | None = None


class JournalRef(_Model):
    """One ConfigMap of archived step records (see ``KubestepClient.step_history``)."""

    config_map: str = Field(alias="configMap")
    steps: int


class Cancellation(_Model):
    reason: Literal["Requested", "RunTimeout"] | None = None
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
    finished_at: dt.datetime | None = Field(None, alias="finishedAt")
    deadline: dt.datetime | None = None
    wake_at: dt.datetime | None = Field(None, alias="wakeAt")
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
    cancel_requested: bool = False
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
            cancel_requested=bool(spec.get("cancelRequested", False)),
            status=ExecutionStatus.model_validate(obj.get("status") or {}),
        )
