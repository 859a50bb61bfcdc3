"""A worker that journals refuses CRDs older than itself, reading only discovery and OpenAPI (pure)."""

from __future__ import annotations

from typing import Any

from kubestep._worker.preflight import missing


def openapi(status_fields: list[str]) -> dict[str, Any]:
    wfx = {
        "type": "object",
        "x-kubernetes-group-version-kind": [
            {"group": "kubestep.io", "kind": "WorkflowExecution", "version": "v1alpha1"}
        ],
        "properties": {"status": {"type": "object", "properties": {f: {"type": "integer"} for f in status_fields}}},
    }
    return {"components": {"schemas": {"io.kubestep.v1alpha1.WorkflowExecution": wfx, "other": {"type": "object"}}}}


def test_the_crds_of_this_release_pass() -> None:
    assert (
        missing(
            {"workflowexecutions", "stepbatches"}, openapi(["phase", "journalLsn", "journalFences", "journalHolder"])
        )
        == []
    )


def test_an_old_release_s_crds_are_named_one_by_one() -> None:
    lacking = missing({"workflowexecutions", "workflowexecutions/status"}, openapi(["phase", "stepsCompleted"]))
    assert len(lacking) == 2 and "StepBatch" in lacking[0] and "journalFences" in lacking[1]
    assert missing({"stepbatches"}, {"components": {"schemas": {}}}) != []
