"""Names and shared vocabulary of the WorkflowExecution API.

Both the worker (in this package) and the operator (``kubestep_operator``)
write ``status``; they agree on phases, reasons, condition types and the time
format through this one module so the two writers cannot drift apart.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

GROUP: Final = "kubestep.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "WorkflowExecution"
PLURAL: Final = "workflowexecutions"

LABEL_WORKFLOW: Final = "kubestep.io/workflow"
LABEL_WORKER: Final = "kubestep.io/worker"
ANNOTATION_WORKFLOWS: Final = "kubestep.io/workflows"
LEASE_PREFIX: Final = "kubestep-worker-"
LABEL_EXECUTION_UID: Final = "kubestep.io/execution-uid"  # on journal ConfigMaps

# Phases.
QUEUED: Final = "Queued"
RUNNING: Final = "Running"
WAITING: Final = "Waiting"
CANCELLING: Final = "Cancelling"
COMPLETED: Final = "Completed"
FAILED: Final = "Failed"
CANCELLED: Final = "Cancelled"
TERMINAL_PHASES: Final = frozenset({COMPLETED, FAILED, CANCELLED})
HELD_PHASES: Final = frozenset({RUNNING, CANCELLING})  # a worker holds the run

# Cancellation reasons.
REQUESTED: Final = "Requested"
RUN_TIMEOUT: Final = "RunTimeout"

# Condition types: `kubectl wait --for=condition=Finished wfx/NAME`.
COND_FINISHED: Final = "Finished"
COND_SCHEDULED: Final = "Scheduled"


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def fmt_time(t: dt.datetime) -> str:
    """RFC 3339 with microseconds; the CRD's date-time format accepts fractions."""
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(s: str | None) -> dt.datetime | None:
    if not s:
        return None
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def execution_path(namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


def condition(
    type_: str, status: bool, reason: str, message: str, at: dt.datetime, generation: int | None
) -> dict[str, Any]:
    cond: dict[str, Any] = {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": fmt_time(at),
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def merge_conditions(existing: list[dict[str, Any]] | None, *new: dict[str, Any]) -> list[dict[str, Any]]:
    """Replace conditions by type, keeping lastTransitionTime when the status did not change."""
    by_type = {c["type"]: c for c in existing or []}
    for c in new:
        old = by_type.get(c["type"])
        if old is not None and old.get("status") == c["status"]:
            c = {**c, "lastTransitionTime": old.get("lastTransitionTime", c["lastTransitionTime"])}
        by_type[c["type"]] = c
    return list(by_type.values())


def finished_status(
    status: dict[str, Any],
    phase: str,
    reason: str,
    message: str,
    at: dt.datetime,
    generation: int | None,
) -> dict[str, Any]:
    """The status fields every terminal transition writes, whoever writes it."""
    return {
        "phase": phase,
        "reason": reason,
        "message": message,
        "finishedAt": fmt_time(at),
        "deadline": None,
        "wakeAt": None,
        "conditions": merge_conditions(
            status.get("conditions"),
            condition(COND_FINISHED, True, phase, message, at, generation),
        ),
    }
