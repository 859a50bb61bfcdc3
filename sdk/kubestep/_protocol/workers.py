"""What a worker's Lease says: until when its holder counts as alive, and which code serves each
workflow id there. Read by the operator (liveness, conflicts) and by workers (collisions, identity)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from .clock import duration, later, not_after, parse_time
from .names import ANNOTATION_QUEUE, ANNOTATION_SOURCES

# A Lease never keeps its holder alive for longer than this after its last renewal, whatever
# ``leaseDurationSeconds`` it claims (the workers' own default is 15 s).
MAX_LEASE_SECONDS = 300.0


def lease_expiry(lease: dict[str, Any], now: dt.datetime) -> dt.datetime | None:
    """When a Lease's holder stops counting as alive, its times clamped (a renewal "in the future"
    counts as ``now``; the duration is 1 to ``MAX_LEASE_SECONDS``); None for a Lease never renewed
    or with a malformed time."""
    spec = lease.get("spec") or {}
    try:
        renewed = not_after(parse_time(spec.get("renewTime")), now)
    except (TypeError, ValueError):
        return None
    if renewed is None:
        return None
    seconds = min(max(duration(spec.get("leaseDurationSeconds"), 15.0) or 15.0, 1.0), MAX_LEASE_SECONDS)
    return later(renewed, seconds)


def lease_sources(lease: dict[str, Any]) -> dict[str, str]:
    """{workflow id: "module.qualname"} from a worker's Lease; {} if it says nothing readable (the
    annotation is anybody's who may write the Lease: never more than a report)."""
    raw = ((lease.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_SOURCES)
    try:
        found = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def lease_queue(lease: dict[str, Any]) -> str:
    """The queue a worker's Lease says its holder serves ("": the default queue)."""
    return str(((lease.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_QUEUE) or "")


def run_queue(obj: dict[str, Any]) -> str:
    """The queue a run asks for (``spec.queue``; "": the default queue)."""
    return str((obj.get("spec") or {}).get("queue") or "")
