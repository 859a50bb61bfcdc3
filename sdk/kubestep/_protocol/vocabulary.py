"""The words of the status contract: phases, reasons, step states, condition types.

Both writers of ``status`` (the worker and the operator) use these enums and nothing else; a
``StrEnum`` member is its string, so it serialises as-is and compares equal to what a user's
``kubectl`` or an older writer put there. Who writes which: ``docs/design.md``.
"""

from __future__ import annotations

import enum


class Phase(enum.StrEnum):
    QUEUED = "Queued"
    RUNNING = "Running"
    WAITING = "Waiting"
    CANCELLING = "Cancelling"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


TERMINAL_PHASES = frozenset({Phase.COMPLETED, Phase.FAILED, Phase.CANCELLED})
HELD_PHASES = frozenset({Phase.RUNNING, Phase.CANCELLING})  # a worker holds the run


class StopReason(enum.StrEnum):
    """``status.cancellation.reason``: why a run was told to stop."""

    REQUESTED = "Requested"  # spec.cancelRequested
    RUN_TIMEOUT = "RunTimeout"  # spec.runTimeoutSeconds of running time spent in one segment
    QUEUE_TIMEOUT = "QueueTimeout"  # spec.queueTimeoutSeconds spent queued


class Reason(enum.StrEnum):
    """``status.reason``: the last transition, one word (also the Event's reason where one is posted)."""

    # Queued
    PENDING = "Pending"  # admitted; a live worker serves the workflow
    NO_WORKER = "NoWorker"  # admitted; no live worker serves it
    WORKFLOW_CONFLICT = "WorkflowConflict"  # admitted; live workers serve its id with different code
    WAIT_OVER = "WaitOver"  # Waiting → Queued at wakeAt (or the event wait's timeout)
    EVENT_ARRIVED = "EventArrived"  # Waiting → Queued: the awaited event was sent
    CHILDREN_ENDED = "ChildrenEnded"  # Waiting → Queued: every child run it waits for has ended
    WORKER_LOST = "WorkerLost"  # the holder's Lease expired: re-queued by the operator
    HANDED_BACK = "HandedBack"  # the holder shut down (SIGTERM) at a step boundary
    REQUEUED = "Requeued"  # the holder could not go on (writes kept failing) and let go
    # Running
    STARTED = "Started"
    RESUMED = "Resumed"
    # Waiting
    WAITING_FOR = "WaitingFor"
    # Cancelling / Cancelled: the StopReason, or this after a hard stop
    REQUESTED = StopReason.REQUESTED.value
    RUN_TIMEOUT = StopReason.RUN_TIMEOUT.value
    QUEUE_TIMEOUT = StopReason.QUEUE_TIMEOUT.value
    GRACE_EXPIRED = "GracePeriodExpired"  # the step in flight (or cleanup) outlived the grace period
    # Completed / Failed
    SUCCEEDED = "Succeeded"
    WORKFLOW_ERROR = "WorkflowError"  # the workflow raised
    WORKER_ERROR = "WorkerError"  # the worker could not record the run (replay would only repeat it)
    REPLAY_MISMATCH = "ReplayMismatch"  # the code no longer matches the recorded history
    # An Event only, never status.reason: the operator requested a child's cancel (the cascade)
    PARENT_STOPPED = "ParentStopped"


class StepState(enum.StrEnum):
    COMPLETED = "Completed"
    FAILED = "Failed"
    INTERRUPTED = "Interrupted"  # cut off by a hard stop or its own timeout: runs again on resume
    WAITING = "Waiting"


class ConditionType(enum.StrEnum):
    FINISHED = "Finished"  # `kubectl wait --for=condition=Finished wfx/NAME`
    SCHEDULED = "Scheduled"  # True while a worker holds the run
