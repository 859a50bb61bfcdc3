"""What a worker's Lease says besides its liveness: which code serves each workflow id there."""

from __future__ import annotations

import json
from typing import Any

from .names import ANNOTATION_SOURCES


def lease_sources(lease: dict[str, Any]) -> dict[str, str]:
    """{workflow id: "module.qualname"} from a worker's Lease; {} if it says nothing readable (the
    annotation is anybody's who may write the Lease: never more than a report)."""
    raw = ((lease.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_SOURCES)
    try:
        found = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}
