"""Names of the WorkflowExecution API: group, version, labels, annotations, paths."""

from __future__ import annotations

from typing import Final

GROUP: Final = "kubestep.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "WorkflowExecution"
PLURAL: Final = "workflowexecutions"

LABEL_WORKFLOW: Final = "kubestep.io/workflow"
LABEL_WORKER: Final = "kubestep.io/worker"
ANNOTATION_WORKFLOWS: Final = "kubestep.io/workflows"
# On a worker's Lease: {workflow id: "module.qualname"} as JSON, the code that serves each id there.
ANNOTATION_SOURCES: Final = "kubestep.io/workflow-sources"
ANNOTATION_QUEUE: Final = "kubestep.io/queue"  # on a worker's Lease: the queue it serves ("": the default)
LEASE_PREFIX: Final = "kubestep-worker-"
LABEL_EXECUTION_UID: Final = "kubestep.io/execution-uid"  # on journal ConfigMaps
ANNOTATION_CANCELLED_BY: Final = "kubestep.io/cancel-requested-by"  # set by the optional admission policy


def execution_path(namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path
