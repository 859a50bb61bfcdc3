"""What a user's cancel says, who asked and when: read from the request itself (``spec``,
``managedFields``, the optional admission policy's annotation), the same way by both writers."""

from __future__ import annotations

import datetime as dt
from typing import Any

from .clock import duration, fmt_time, not_after, now, parse_time
from .names import ANNOTATION_CANCELLED_BY
from .records import Cancellation
from .vocabulary import StopReason


def grace_seconds(spec: dict[str, Any], default: float) -> float:
    """The run's grace period: its own (``spec.cancelGracePeriodSeconds``), else the installation's
    (``KUBESTEP_CANCEL_GRACE_SECONDS``: ``_settings``)."""
    own = duration(spec.get("cancelGracePeriodSeconds"))
    return own if own is not None else default


def cancel_requester(meta: dict[str, Any], audited: bool = False) -> dict[str, str]:
    """Who asked for the cancel: the field manager of the request that set ``spec.cancelRequested``
    (``kubectl-patch``, ``kubestep-sdk``, ``kubestep-cli`` …: the client's own word), and the
    authenticated user when the cluster's admission policies record it (``charts/kubestep``:
    ``cancelAudit``). ``audited`` says they are installed (``KUBESTEP_CANCEL_AUDIT``): only then does
    the annotation mean anything, since without them anyone who may patch a run may write it."""
    who: dict[str, str] = {}
    latest = ""
    for entry in meta.get("managedFields") or []:
        spec_fields = (entry.get("fieldsV1") or {}).get("f:spec") or {}
        if "f:cancelRequested" in spec_fields and entry.get("manager") and str(entry.get("time") or "") >= latest:
            latest = str(entry.get("time") or "")
            who["requestedBy"] = str(entry["manager"])
    user = (meta.get("annotations") or {}).get(ANNOTATION_CANCELLED_BY) if audited else None
    if user:
        who["requestedByUser"] = user
    return who


def cancel_time(meta: dict[str, Any]) -> dt.datetime | None:
    """When the apiserver recorded the request that set ``spec.cancelRequested`` (managedFields keep
    whole seconds), or None. A client may write ``managedFields`` itself, so a time in the future
    counts as now and a malformed one is ignored."""
    times = []
    for e in meta.get("managedFields") or []:
        if "f:cancelRequested" in ((e.get("fieldsV1") or {}).get("f:spec") or {}):
            try:
                times.append(parse_time(e.get("time")))
            except (TypeError, ValueError):
                continue
    return not_after(max((t for t in times if t is not None), default=None), now())


def cancel_note(obj: dict[str, Any], audited: bool = False) -> Cancellation:
    """What a user's cancel says: the reason given (``spec.cancelReason``) and who asked."""
    spec = obj.get("spec") or {}
    record: Cancellation = {"reason": StopReason.REQUESTED}
    if spec.get("cancelReason"):
        record["message"] = str(spec["cancelReason"])
    record.update(cancel_requester(obj.get("metadata") or {}, audited))  # type: ignore[typeddict-item]
    return record


def cancel_request(obj: dict[str, Any], at: dt.datetime, audited: bool = False) -> Cancellation:
    """``status.cancellation`` for a user's cancel, seen at ``at``."""
    return {**cancel_note(obj, audited), "requestedAt": fmt_time(at)}


def events_pending(spec: dict[str, Any], status: dict[str, Any], topic: str) -> int:
    """Events of ``topic`` sent to the run (``spec.events``) and not yet consumed by a wait."""
    consumed = set(status.get("eventsConsumed") or [])
    return sum(1 for e in spec.get("events") or [] if e.get("topic") == topic and e.get("name") not in consumed)
