"""Before a worker claims anything: are the cluster's CRDs as new as this worker?

Helm never upgrades a chart's ``crds/``, so an upgrade leaves the old WorkflowExecution CRD in place
until someone applies the new one. Its structural schema would silently drop the step journal's
fields (``journalLsn``, ``journalFences``) from every status write, and a dropped fence lets records
of a holder that lost its run count. So a worker that journals refuses to start until the StepBatch
resource is served, its schema knows ``spec.runsJSON`` (an older one would prune it: every batch
written empty) and the WorkflowExecution schema knows those fields, and says what to apply. Both
are read from discovery and the OpenAPI document, which any authenticated user may read: a worker
needs no RBAC on CRDs for it."""

from __future__ import annotations

from typing import Any

from .. import _protocol as api
from .._errors import NotFoundError
from .._kube import Kube
from .._protocol import batches

APPLY = (
    "apply the CRDs of this release first (Helm never upgrades a chart's crds/): "
    "kubectl apply --server-side --force-conflicts -f crds/ (or the chart's crds/ directory)"
)


class OutdatedCRDs(Exception):
    """The cluster's CRDs are older than this worker."""


def _properties(doc: dict[str, Any], kind: str, field: str) -> set[str]:
    """The properties the schema of ``kind`` knows under ``field`` (``spec``, ``status``)."""
    for schema in ((doc.get("components") or {}).get("schemas") or {}).values():
        for gvk in schema.get("x-kubernetes-group-version-kind") or []:
            if gvk.get("group") == api.GROUP and gvk.get("kind") == kind:
                return set((((schema.get("properties") or {}).get(field) or {}).get("properties")) or {})
    return set()


def _step_properties(doc: dict[str, Any]) -> set[str]:
    """The properties the WorkflowExecution schema knows of a step record (``status.steps[]``)."""
    for schema in ((doc.get("components") or {}).get("schemas") or {}).values():
        for gvk in schema.get("x-kubernetes-group-version-kind") or []:
            if gvk.get("group") == api.GROUP and gvk.get("kind") == api.KIND:
                status = ((schema.get("properties") or {}).get("status") or {}).get("properties") or {}
                return set((((status.get("steps") or {}).get("items") or {}).get("properties")) or {})
    return set()


def missing(resources: set[str], openapi: dict[str, Any]) -> list[str]:
    """What this worker needs that the cluster's CRDs lack (pure: ``check`` reads the inputs)."""
    out = []
    if batches.BATCH_PLURAL not in resources:
        out.append(f"the {batches.BATCH_KIND} CRD (stepbatches.{api.GROUP})")
    elif "runsJSON" not in _properties(openapi, batches.BATCH_KIND, "spec"):
        # An older StepBatch CRD would prune runsJSON: every batch would be written empty.
        out.append(f"the {batches.BATCH_KIND} CRD of this release (spec.runsJSON)")
    fields = ("journalLsn", "journalFences", "journalHolder", "journalReader")
    if not set(fields) <= _properties(openapi, api.KIND, "status"):
        out.append(f"the step journal's status fields in the {api.KIND} CRD ({', '.join(fields)})")
    if not {"attempt", "retryAt"} <= _step_properties(openapi):
        # An older schema would prune them: a resumed run would run a retried step's attempts again
        # instead of going on with its schedule.
        out.append(f"the step records' retry fields in the {api.KIND} CRD (attempt, retryAt)")
    return out


async def check(kube: Kube) -> None:
    """Raises ``OutdatedCRDs`` with what to apply if the CRDs are older than this worker."""
    version = f"/apis/{api.GROUP}/{api.VERSION}"
    try:
        group = await kube.get(version)
        openapi = await kube.get(f"/openapi/v3{version}")
    except NotFoundError:
        raise OutdatedCRDs(f"the {api.API_VERSION} API is not served: {APPLY}") from None
    resources = {r.get("name", "") for r in group.get("resources") or []}
    lacking = missing(resources, openapi)
    if lacking:
        raise OutdatedCRDs(f"this worker needs {' and '.join(lacking)}: {APPLY}")
