"""Pydantic views of a WorkflowExecution, for the SDK's callers.

The worker and the operator build status patches as plain dicts (they must
round-trip unknown fields untouched); callers get these typed, validated views.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ._protocol import API_VERSION, KIND, TERMINAL_PHASES, cancel_note, cancel_time, family, parse_time

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
    #: A retried step's attempt (``key~attempt-N`` for N > 1), and for a failed attempt that is
    #: retried, when the next one is due.
    attempt: int | None = None
    retry_at: dt.datetime | None = Field(None, alias="retryAt")


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
    #: When the run's budget runs out, while a worker holds it (the segment's end: active time only).
    deadline: dt.datetime | None = None
    #: What a segment kept of the budget when its run was re-queued mid-segment (lost or handed back).
    budget_remaining_seconds: float | None = Field(None, alias="budgetRemainingSeconds")
    wake_at: dt.datetime | None = Field(None, alias="wakeAt")
    waiting_for: dict[str, Any] | None = Field(None, alias="waitingFor")
    events_consumed: list[str] = Field([], alias="eventsConsumed")
    steps_completed: int = Field(0, alias="stepsCompleted")
    #: The key of the step the run reached last (the ``STEP`` column of ``kubectl get wfx``).
    current_step: str | None = Field(None, alias="currentStep")
    #: The most recent step records; older ones are archived (``journal``).
    steps: list[StepRecord] = []
    journal: list[JournalRef] = []
    result: Any = None
    error: dict[str, Any] | None = None
    cancellation: Cancellation | None = None
    conditions: list[Condition] = []
    observed_generation: int | None = Field(None, alias="observedGeneration")


class Execution(_Model):
    """One run, as the apiserver last reported it.

    ``raw`` is the object itself (``apiVersion`` and ``kind`` filled in where a list left them out),
    for callers that print or keep it whole (``kubestep get -o yaml``)."""

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
    #: ``spec.queue``: only workers started with this queue may run it (None: the default queue).
    queue: str | None = None
    #: ``spec.ttlSecondsAfterFinished``: deleted this long after it finishes (None: the installation's default).
    ttl_seconds_after_finished: int | None = None
    labels: dict[str, str] = {}
    uid: str | None = None
    #: ``metadata.creationTimestamp``.
    created_at: dt.datetime | None = None
    status: ExecutionStatus = ExecutionStatus()
    raw: dict[str, Any] = Field(default_factory=dict, repr=False, exclude=True)

    @property
    def finished(self) -> bool:
        return self.status.phase in TERMINAL_PHASES

    @property
    def parent(self) -> str | None:
        """The run that started this one (a child run: ``ctx.step.invoke``), from its ownerReference."""
        link = family.parent_of(self.raw)
        return link[0] if link else None

    @property
    def root(self) -> str | None:
        """The root of this run's tree (its label ``kubestep.io/root``), None for a run that is no child."""
        return self.labels.get(family.LABEL_ROOT) if self.parent else None

    @property
    def depth(self) -> int:
        """Levels below its root: 0 for a root (a run started by a client), 1 for its children, ..."""
        return family.depth_of(self.raw) if self.parent else 0

    @property
    def cancellation(self) -> Cancellation | None:
        """The cancel, if any: ``status.cancellation`` once the operator or a worker recorded it;
        before that, for a cancel requested in ``spec``, what the request says (reason ``Requested``,
        the ``cancelReason`` given, who asked: the request's field manager, and when)."""
        if self.status.cancellation is not None:
            return self.status.cancellation
        if not self.cancel_requested:
            return None
        # When: the time the apiserver recorded the request that set the flag (managedFields).
        at = cancel_time(self.raw.get("metadata") or {})
        return Cancellation.model_validate({**cancel_note(self.raw), "requestedAt": at})

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> Execution:
        spec = obj.get("spec") or {}
        meta = obj["metadata"]
        return cls(
            id=meta["name"],
            namespace=meta["namespace"],
            workflow=spec.get("workflow", ""),
            input=spec.get("input"),
            run_timeout_seconds=spec.get("runTimeoutSeconds"),
            queue_timeout_seconds=spec.get("queueTimeoutSeconds"),
            cancel_grace_period_seconds=spec.get("cancelGracePeriodSeconds"),
            cancel_requested=bool(spec.get("cancelRequested", False)),
            cancel_reason=spec.get("cancelReason"),
            events=list(spec.get("events") or []),
            queue=spec.get("queue") or None,
            ttl_seconds_after_finished=spec.get("ttlSecondsAfterFinished"),
            labels=dict(meta.get("labels") or {}),
            uid=meta.get("uid"),
            created_at=parse_time(meta.get("creationTimestamp")),
            status=ExecutionStatus.model_validate(obj.get("status") or {}),
            raw={"apiVersion": API_VERSION, "kind": KIND, **obj},
        )


class ExecutionList(_Model):
    """One page of runs (``KubestepClient.list_executions``)."""

    items: list[Execution]
    #: Pass it back as ``continue_token`` for the next page; None on the last page.
    continue_token: str | None = None
    #: The list's ``resourceVersion``: a watch from it misses no change made after the list.
    resource_version: str = ""


class RunEvent(_Model):
    """A core/v1 Event about a run (``KubestepClient.events``): what the operator and the workers
    reported, as ``kubectl describe wfx`` shows them."""

    #: ``Normal`` or ``Warning``.
    type: str = ""
    #: One word: the transition or the problem (``Queued``, ``NoWorker``, ``Cancelled`` …).
    reason: str = ""
    message: str = ""
    #: Who reported it (``kubestep-operator``, ``kubestep-worker`` …).
    component: str = ""
    #: Times seen, and when first and last.
    count: int = 1
    first_seen: dt.datetime | None = None
    last_seen: dt.datetime | None = None

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> RunEvent:
        first = obj.get("firstTimestamp") or obj.get("eventTime")
        last = obj.get("lastTimestamp") or (obj.get("series") or {}).get("lastObservedTime") or first
        return cls(
            type=str(obj.get("type") or ""),
            reason=str(obj.get("reason") or ""),
            message=str(obj.get("message") or obj.get("note") or ""),
            component=str((obj.get("source") or {}).get("component") or obj.get("reportingComponent") or ""),
            count=int(obj.get("count") or (obj.get("series") or {}).get("count") or 1),
            first_seen=_time(first),
            last_seen=_time(last),
        )


def _time(value: Any) -> dt.datetime | None:
    """An Event's time; anyone who may create Events wrote it, so a malformed one is left out."""
    try:
        return parse_time(value) if isinstance(value, str) else None
    except ValueError:
        return None
