"""A worker that journals refuses CRDs older than itself, reading only discovery and OpenAPI (pure)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kubestep._worker.preflight import missing


def openapi(
    status_fields: list[str],
    batch_fields: tuple[str, ...] = ("worker", "runsJSON", "runs"),
    step_fields: tuple[str, ...] = ("key", "state", "attempt", "retryAt"),
) -> dict[str, Any]:
    def schema(kind: str, field: str, fields: Iterable[str]) -> dict[str, Any]:
        return {
            "type": "object",
            "x-kubernetes-group-version-kind": [{"group": "kubestep.io", "kind": kind, "version": "v1alpha1"}],
            "properties": {field: {"type": "object", "properties": {f: {"type": "integer"} for f in fields}}},
        }

    wfx = schema("WorkflowExecution", "status", status_fields)
    wfx["properties"]["status"]["properties"]["steps"] = {
        "type": "array",
        "items": {"type": "object", "properties": {f: {"type": "string"} for f in step_fields}},
    }
    return {
        "components": {
            "schemas": {
                "io.kubestep.v1alpha1.WorkflowExecution": wfx,
                "io.kubestep.v1alpha1.StepBatch": schema("StepBatch", "spec", batch_fields),
                "other": {"type": "object"},
            }
        }
    }


def test_the_crds_of_this_release_pass() -> None:
    assert (
        missing(
            {"workflowexecutions", "stepbatches"},
            openapi(["phase", "journalLsn", "journalFences", "journalHolder", "journalReader"]),
        )
        == []
    )


def test_an_old_release_s_crds_are_named_one_by_one() -> None:
    lacking = missing({"workflowexecutions", "workflowexecutions/status"}, openapi(["phase", "stepsCompleted"]))
    assert len(lacking) == 2 and "StepBatch" in lacking[0] and "journalFences" in lacking[1]
    assert missing({"stepbatches"}, {"components": {"schemas": {}}}) != []


def test_a_step_batch_crd_that_would_prune_runs_json_is_refused() -> None:
    """The previous release's StepBatch CRD knows only spec.runs: it would drop every record written."""
    full = ["phase", "journalLsn", "journalFences", "journalHolder", "journalReader"]
    lacking = missing({"workflowexecutions", "stepbatches"}, openapi(full, ("worker", "runs")))
    assert len(lacking) == 1 and "runsJSON" in lacking[0]


def test_a_workflow_execution_crd_without_the_runs_json_guard_is_refused() -> None:
    """Without status.journalReader a worker of the release before could claim this release's runs."""
    lacking = missing({"workflowexecutions", "stepbatches"}, openapi(["journalLsn", "journalFences", "journalHolder"]))
    assert len(lacking) == 1 and "journalReader" in lacking[0]


def test_a_workflow_execution_crd_that_would_prune_a_retry_s_fields_is_refused() -> None:
    """An older schema drops attempt and retryAt: a resumed run would run a retried step's attempts again."""
    full = ["phase", "journalLsn", "journalFences", "journalHolder", "journalReader"]
    lacking = missing({"workflowexecutions", "stepbatches"}, openapi(full, step_fields=("key", "state")))
    assert len(lacking) == 1 and "retryAt" in lacking[0]
