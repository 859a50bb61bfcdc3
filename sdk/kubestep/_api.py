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

# Cancellation reasons (``status.cancellation.reason``: why a run was told to stop).
REQUESTED: Final = "Requested"
RUN_TIMEOUT: Final = "RunTimeout"
QUEUE_TIMEOUT: Final = "QueueTimeout"
# ``status.reason`` of a Cancelled run whose step in flight (or cleanup) outlived the grace period
# and was interrupted; ``status.cancellation.reason`` still says why it was told to stop.
GRACE_EXPIRED: Final = "GracePeriodExpired"

# Step record states.
STEP_COMPLETED: Final = "Completed"
STEP_FAILED: Final = "Failed"
STEP_INTERRUPTED: Final = "Interrupted"  # cut off by a hard stop or its own timeout: runs again on resume
STEP_WAITING: Final = "Waiting"


def grace_seconds(spec: dict[str, Any], default: float) -> float:
    """The run's grace period: its own (``spec.cancelGracePeriodSeconds``), else the installation's
    (``KUBESTEP_CANCEL_GRACE_SECONDS``: ``_settings``)."""
    own = spec.get("cancelGracePeriodSeconds")
    return float(own) if own is not None else default


ANNOTATION_CANCELLED_BY: Final = "kubestep.io/cancel-requested-by"  # set by the optional admission policy


def cancel_requester(meta: dict[str, Any]) -> dict[str, str]:
    """Who asked for the cancel: the field manager of the request that set ``spec.cancelRequested``
    (``kubectl-patch``, ``kubestep-sdk``, ``kubestep-cli`` …), and the authenticated user when the
    cluster's admission policy recorded it (``charts/kubestep``: ``cancelAudit``)."""
    who: dict[str, str] = {}
    latest = ""
    for entry in meta.get("managedFields") or []:
        spec_fields = (entry.get("fieldsV1") or {}).get("f:spec") or {}
        if "f:cancelRequested" in spec_fields and entry.get("manager") and str(entry.get("time") or "") >= latest:
            latest = str(entry.get("time") or "")
            who["requestedBy"] = str(entry["manager"])
    user = (meta.get("annotations") or {}).get(ANNOTATION_CANCELLED_BY)
    if user:
        who["requestedByUser"] = user
    return who


def cancel_time(meta: dict[str, Any]) -> dt.datetime | None:
    """When the apiserver recorded the request that set ``spec.cancelRequested`` (managedFields keep
    whole seconds), or None."""
    times = [
        parse_time(e.get("time"))
        for e in meta.get("managedFields") or []
        if "f:cancelRequested" in ((e.get("fieldsV1") or {}).get("f:spec") or {})
    ]
    return max((t for t in times if t is not None), default=None)


def cancel_note(obj: dict[str, Any]) -> dict[str, Any]:
    """What a user's cancel says: the reason given (``spec.cancelReason``) and who asked."""
    spec = obj.get("spec") or {}
    record: dict[str, Any] = {"reason": REQUESTED}
    if spec.get("cancelReason"):
        record["message"] = str(spec["cancelReason"])
    record.update(cancel_requester(obj.get("metadata") or {}))
    return record


def cancel_request(obj: dict[str, Any], at: dt.datetime) -> dict[str, Any]:
    """``status.cancellation`` for a user's cancel, seen at ``at``."""
    return {**cancel_note(obj), "requestedAt": fmt_time(at)}


def events_pending(spec: dict[str, Any], status: dict[str, Any], topic: str) -> int:
    """Events of ``topic`` sent to the run (``spec.events``) and not yet consumed by a wait."""
    consumed = set(status.get("eventsConsumed") or [])
    return sum(1 for e in spec.get("events") or [] if e.get("topic") == topic and e.get("name") not in consumed)


# Condition types: `kubectl wait --for=condition=Finished wfx/NAME`.
COND_FINISHED: Final = "Finished"
COND_SCHEDULED: Final = "Scheduled"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def fmt_time(t: dt.datetime) -> str:
    """RFC 3339 with microseconds; the CRD's date-time format accepts fractions."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
