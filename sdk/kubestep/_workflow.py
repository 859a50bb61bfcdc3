"""``@workflow``: declares a workflow and lets callers start it.

A workflow is an async function ``fn(ctx, input)``. Decorating registers it
in a process-wide registry by id, which is what ``kubestep worker MODULE``
serves after importing the module.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, overload

from ._errors import WorkflowDefinitionError

if TYPE_CHECKING:
    from ._client import ExecutionHandle, KubestepClient
    from ._context import WorkflowContext

WorkflowFn = Callable[["WorkflowContext", Any], Awaitable[Any]]

_registry: dict[str, Workflow] = {}
_ID = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?$")


class Workflow:
    """A registered workflow; ``await wf.invoke(client, payload=...)`` starts a run."""

    def __init__(self, fn: WorkflowFn, id: str) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise WorkflowDefinitionError(f"workflow {id!r} must be an async function (ctx, input)")
        if not _ID.match(id):
            raise WorkflowDefinitionError(
                f"workflow id {id!r} must be 1-253 letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit"
            )
        self.id = id
        self.fn = fn
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Workflow {self.id}>"

    async def invoke(
        self,
        client: KubestepClient,
        payload: Any = None,
        *,
        run_timeout_seconds: int | None = None,
        name: str | None = None,
        queue_timeout_seconds: int | None = None,
        cancel_grace_period_seconds: int | None = None,
        queue: str | None = None,
        ttl_seconds_after_finished: int | None = None,
    ) -> ExecutionHandle:
        """Creates a WorkflowExecution for this workflow and returns its handle (the arguments:
        ``KubestepClient.start``)."""
        return await client.start(
            self.id,
            payload,
            run_timeout_seconds=run_timeout_seconds,
            name=name,
            queue_timeout_seconds=queue_timeout_seconds,
            cancel_grace_period_seconds=cancel_grace_period_seconds,
            queue=queue,
            ttl_seconds_after_finished=ttl_seconds_after_finished,
        )


@overload
def workflow(fn: WorkflowFn, /) -> Workflow: ...
@overload
def workflow(*, id: str | None = None) -> Callable[[WorkflowFn], Workflow]: ...


def workflow(fn: WorkflowFn | None = None, /, *, id: str | None = None) -> Workflow | Callable[[WorkflowFn], Workflow]:
    """Declares a workflow: ``@workflow`` or ``@workflow(id="name")``."""

    def register(f: WorkflowFn) -> Workflow:
        wf = Workflow(f, id or f.__name__)
        existing = _registry.get(wf.id)
        if existing is not None and existing.fn.__qualname__ != f.__qualname__:
            raise WorkflowDefinitionError(f"two workflows share the id {wf.id!r}")
        _registry[wf.id] = wf
        return wf

    return register(fn) if fn is not None else register


def registered() -> dict[str, Workflow]:
    """Every workflow declared in this process so far, by id."""
    return dict(_registry)
