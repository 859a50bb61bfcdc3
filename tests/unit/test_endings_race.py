"""A cancel learned after the workflow ended, before its ending is written, wins (the chaos soak found
a run that ended Failed although its cancel had been accepted first). The driver with an in-memory
stand-in for the apiserver: the cluster suite and the soak are the tests of record."""

from __future__ import annotations

from typing import Any

import pytest

from kubestep import _protocol as api
from kubestep._errors import ExecutionCancelled
from kubestep._settings import WorkerSettings
from kubestep._worker.running import Run
from kubestep._workflow import Workflow


class Apiserver:
    def __init__(self) -> None:
        self.writes: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    async def update_status(self, obj: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(patch)
        meta = {**obj["metadata"], "resourceVersion": str(int(obj["metadata"]["resourceVersion"]) + 1)}
        return {**obj, "metadata": meta, "status": {**(obj.get("status") or {}), **patch}}

    async def post_event(self, obj: dict[str, Any], **event: Any) -> None:
        self.events.append(event)


async def _wf(ctx: Any, _: Any) -> None:
    return None


def held(rv: int, cancel: bool) -> dict[str, Any]:
    return {
        "metadata": {"name": "r", "namespace": "ns", "resourceVersion": str(rv), "generation": 1},
        "spec": {"workflow": "wf", "cancelRequested": cancel},
        "status": {"phase": api.Phase.RUNNING, "worker": "w", "attempt": 1},
    }


@pytest.mark.parametrize("ending", ["failed", "completed"])
async def test_a_cancel_seen_on_the_watch_before_the_ending_is_written_wins(ending: str) -> None:
    apiserver = Apiserver()
    run = Run(apiserver, Workflow(_wf, "wf"), held(5, cancel=False), "w", WorkerSettings(module="m"))  # type: ignore[arg-type]
    run.claimed = True
    run.observe(held(6, cancel=True))  # the user's cancel arrives on the watch after the workflow ended
    with pytest.raises(ExecutionCancelled):
        if ending == "failed":
            await run._finish_failed(ValueError("boom"))
        else:
            await run._finish_completed({"ok": True})
    assert apiserver.writes == []  # nothing but the Cancelled ending will be written


async def test_without_a_cancel_the_ending_is_written() -> None:
    apiserver = Apiserver()
    run = Run(apiserver, Workflow(_wf, "wf"), held(5, cancel=False), "w", WorkerSettings(module="m"))  # type: ignore[arg-type]
    run.claimed = True
    await run._finish_failed(ValueError("boom"))
    assert apiserver.writes and apiserver.writes[0]["phase"] == api.Phase.FAILED
