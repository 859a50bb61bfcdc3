"""A user's workflow module, shipped in an image built FROM the Kubestep image (tests/pods)."""

from __future__ import annotations

import os
from typing import Any

from kubestep import WorkflowContext, workflow


async def _greet(name: str) -> dict[str, Any]:
    # What only a pod of the user's image can say: where this module was loaded from, and which pod ran it.
    return {"greeting": f"hello, {name}", "file": __file__, "pod": os.environ.get("POD_NAME", "")}


@workflow(id="myflows-greet")
async def greet(ctx: WorkflowContext, input: dict[str, Any] | None) -> dict[str, Any]:
    return await ctx.step.run("greet", _greet, (input or {}).get("name", "world"))
