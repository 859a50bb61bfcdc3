"""``KubestepClient`` and ``ExecutionHandle``: start, observe and cancel runs.

The client only writes ``spec`` (create, and ``cancelRequested: true``); the
operator and workers own ``status``. That is why an SDK cancel, a
``kubectl patch`` and a ``kubectl apply`` behave the same.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any

from . import _journal as journal
from . import _protocol as api
from ._errors import (
    ApiError,
    ExecutionCancelledError,
    ExecutionFailedError,
    ExecutionNotFoundError,
    InvalidInputError,
    NotFoundError,
    ResultTimeoutError,
    TransportError,
)
from ._kube import Kube
from ._models import Execution, StepRecord


def _generate_name(workflow_id: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", workflow_id.lower()).strip("-")[:40] or "run"
    return base + "-"


FIELD_MANAGER = "kubestep-sdk"


class KubestepClient:
    """Talks to the cluster from kubeconfig ($KUBECONFIG, ~/.kube/config) or in-cluster config.

    ``field_manager`` names the client's writes to the apiserver; a cancel records it as who
    asked (``status.cancellation.requestedBy``)."""

    def __init__(
        self,
        namespace: str | None = None,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        field_manager: str = FIELD_MANAGER,
    ) -> None:
        self._kube = Kube(kubeconfig, context)
        self.namespace = namespace or self._kube.default_namespace or "default"
        self._manager = {"fieldManager": field_manager}

    async def aclose(self) -> None:
        await self._kube.aclose()

    async def __aenter__(self) -> KubestepClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _path(self, execution_id: str | None = None) -> str:
        return api.execution_path(self.namespace, execution_id)

    async def start(
        self,
        workflow_id: str,
        payload: Any = None,
        *,
        run_timeout_seconds: int | None = None,
        name: str | None = None,
        queue_timeout_seconds: int | None = None,
        cancel_grace_period_seconds: int | None = None,
        labels: dict[str, str] | None = None,
        queue: str | None = None,
    ) -> ExecutionHandle:
        """Creates a WorkflowExecution; the apiserver validates it (schema and CEL).

        ``run_timeout_seconds``: budget of continuous running time; ``queue_timeout_seconds``:
        cancel it if no worker claims it this long after it is queued; ``cancel_grace_period_seconds``:
        how long a step in flight may finish after a stop (default: the installation's, 30 s);
        ``queue``: only workers started with this queue may run it (default: the default queue)."""
        meta: dict[str, Any] = {"labels": dict(labels or {})}
        if len(workflow_id) <= 63:
            meta["labels"][api.LABEL_WORKFLOW] = workflow_id
        if name:
            meta["name"] = name
        else:
            meta["generateName"] = _generate_name(workflow_id)
        _check_payload("input", payload)
        spec: dict[str, Any] = {"workflow": workflow_id, "input": payload}
        if run_timeout_seconds is not None:
            spec["runTimeoutSeconds"] = run_timeout_seconds
        if queue_timeout_seconds is not None:
            spec["queueTimeoutSeconds"] = queue_timeout_seconds
        if cancel_grace_period_seconds is not None:
            spec["cancelGracePeriodSeconds"] = cancel_grace_period_seconds
        if queue:
            spec["queue"] = queue
        body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": meta, "spec": spec}
        obj = await self._kube.create(self._path(), body, self._manager)
        return ExecutionHandle(self, obj["metadata"]["name"], workflow_id)

    async def get_execution(self, execution_id: str) -> Execution:
        return Execution.from_object(await self._get_object(execution_id))

    async def step_history(self, execution_id: str) -> list[StepRecord]:
        """Every step record of a run, in order: those archived in its journal ConfigMaps,
        then ``status.steps``; where a step was recorded twice (run again after failing),
        its last record."""
        obj = await self._get_object(execution_id)
        status = obj.get("status") or {}
        archived = await journal.load(
            self._kube, self.namespace, list(status.get("journal") or []), obj["metadata"].get("uid")
        )
        return [StepRecord.model_validate(r) for r in journal.history(archived + list(status.get("steps") or []))]

    async def _get_object(self, execution_id: str) -> dict[str, Any]:
        try:
            obj: dict[str, Any] = await self._kube.get(self._path(execution_id))
            return obj
        except NotFoundError:
            raise ExecutionNotFoundError(f"no execution {execution_id!r} in namespace {self.namespace}") from None

    async def cancel_execution(
        self, execution_id: str, reason: str | None = None, grace_period_seconds: int | None = None
    ) -> bool:
        """Requests cancellation. True if the run was queued, running or waiting; False if it
        had already finished or does not exist.

        ``reason`` is recorded with the cancel (``status.cancellation.message``, shown by
        ``kubectl describe``), with this client's field manager as who asked. A step in flight
        gets the run's grace period to finish; ``grace_period_seconds`` shortens it (0: stop
        now), like ``kubectl delete --grace-period``."""
        path = self._path(execution_id)
        try:
            obj = await self._kube.get(path)
            if (obj.get("status") or {}).get("phase") in api.TERMINAL_PHASES:
                return False  # leave a finished run's object alone
            # Unconditional: a run with fast steps changes its resourceVersion
            # every few milliseconds. The flag is irrevocable, and a worker's
            # ending write is conditional on the version it saw, so a run that
            # was not finished in this response will end Cancelled.
            spec: dict[str, Any] = {"cancelRequested": True}
            if reason and not (obj.get("spec") or {}).get("cancelReason"):
                spec["cancelReason"] = reason[:1024]
            if grace_period_seconds is not None:
                current = (obj.get("spec") or {}).get("cancelGracePeriodSeconds")
                spec["cancelGracePeriodSeconds"] = (
                    grace_period_seconds if current is None else min(current, grace_period_seconds)
                )
            obj = await self._kube.merge_patch(path, {"spec": spec}, params=self._manager)
        except NotFoundError:
            return False
        return (obj.get("status") or {}).get("phase") not in api.TERMINAL_PHASES

    async def send_event(self, execution_id: str, topic: str, data: Any = None, *, name: str | None = None) -> str:
        """Sends an event to a run, for its ``ctx.step.wait_for_event(key, topic)``; returns the
        event's name. Each event is delivered to exactly one wait, in the order sent. Give a
        ``name`` to make a retried send safe: the same name twice is refused (``InvalidError``)."""
        _check_payload("event data", data)
        name = name or f"{topic[:200]}-{uuid.uuid4().hex[:12]}"
        event = {"name": name, "topic": topic, "data": data}
        try:
            await self._kube.request(
                "PATCH",
                self._path(execution_id),
                content_type="application/json-patch+json",
                params=self._manager,
                json_body=[{"op": "add", "path": "/spec/events/-", "value": event}],
            )
        except NotFoundError:
            raise ExecutionNotFoundError(f"no execution {execution_id!r} in namespace {self.namespace}") from None
        return name

    async def wait(self, execution_id: str, timeout: float | None = None) -> Execution:
        """Watches the execution until it reaches a terminal phase."""
        path = self._path()
        params = {"fieldSelector": f"metadata.name={execution_id}"}

        async def follow() -> Execution:
            while True:
                listing = await self._kube.get(path, params)
                items = listing.get("items", [])
                if not items:
                    raise ExecutionNotFoundError(f"no execution {execution_id!r} in namespace {self.namespace}")
                execution = Execution.from_object(items[0])
                if execution.finished:
                    return execution
                try:
                    async for event in self._kube.watch(path, listing["metadata"]["resourceVersion"], params):
                        if event.get("type") == "DELETED":
                            raise ExecutionNotFoundError(f"execution {execution_id!r} was deleted")
                        if event.get("type") in ("ADDED", "MODIFIED"):
                            execution = Execution.from_object(event["object"])
                            if execution.finished:
                                return execution
                except (TransportError, ApiError):
                    await asyncio.sleep(0.1)

        try:
            return await asyncio.wait_for(follow(), timeout)
        except TimeoutError:
            raise ResultTimeoutError(f"execution {execution_id} did not finish within {timeout} s") from None


class ExecutionHandle:
    """A started run. ``id`` is the WorkflowExecution's name."""

    def __init__(self, client: KubestepClient, id: str, workflow_id: str) -> None:
        self._client = client
        self.id = id
        self.workflow_id = workflow_id

    def __repr__(self) -> str:
        return f"<ExecutionHandle {self._client.namespace}/{self.id} workflow={self.workflow_id}>"

    async def status(self) -> Execution:
        return await self._client.get_execution(self.id)

    async def wait(self, timeout: float | None = None) -> Execution:
        return await self._client.wait(self.id, timeout)

    async def result(self, timeout: float | None = None) -> Any:
        """The workflow's return value; raises ``ExecutionFailedError`` or ``ExecutionCancelledError``."""
        execution = await self._client.wait(self.id, timeout)
        if execution.status.phase == api.Phase.FAILED.value:
            raise ExecutionFailedError(self.id, execution.status.error)
        if execution.status.phase == api.Phase.CANCELLED.value:
            raise ExecutionCancelledError(self.id, execution.status.reason, execution.status.message)
        return execution.status.result

    async def steps(self) -> list[StepRecord]:
        """Every step record of the run, archived ones included."""
        return await self._client.step_history(self.id)

    async def cancel(
        self,
        client: KubestepClient | None = None,
        *,
        reason: str | None = None,
        grace_period_seconds: int | None = None,
    ) -> bool:
        return await (client or self._client).cancel_execution(self.id, reason, grace_period_seconds)

    async def send_event(self, topic: str, data: Any = None, *, name: str | None = None) -> str:
        return await self._client.send_event(self.id, topic, data, name=name)


# A WorkflowExecution is stored whole in etcd, which refuses requests over 1.5 MiB (its default
# --max-request-bytes), and its status (step outputs, the result) must fit beside the input.
MAX_PAYLOAD_BYTES = 512 * 1024


def _check_payload(what: str, value: Any) -> None:
    """Refuses, before sending, what the apiserver could not store or would store differently."""
    try:
        encoded = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise InvalidInputError(f"the {what} is not JSON: {e}") from None
    big = _int_out_of_range(value)
    if big is not None:
        raise InvalidInputError(
            f"the {what} holds the integer {big}, outside the 64-bit range the apiserver stores exactly "
            "(it would keep a rounded float): send it as a string"
        )
    if len(encoded) > MAX_PAYLOAD_BYTES:
        raise InvalidInputError(
            f"the {what} is {len(encoded):,} bytes of JSON; the limit is {MAX_PAYLOAD_BYTES:,} bytes (a run is "
            "stored whole in etcd, 1.5 MiB at most, with its status beside it): pass a reference instead"
        )


def _int_out_of_range(value: Any) -> int | None:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, bool):
            continue
        if isinstance(v, int) and not -(2**63) <= v < 2**63:
            return v
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return None
