"""A module that defines a workflow id ``kubestep.examples`` already defines (``steps``): a worker
serving it beside a worker of the examples must refuse to start (tests/security/test_routing.py)."""

from __future__ import annotations

from typing import Any

from kubestep import WorkflowContext, workflow


@workflow(id="steps")
async def other_steps(ctx: WorkflowContext, input: Any) -> str:
    return "not the examples' steps"
