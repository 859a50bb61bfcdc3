"""``KubestepClient`` and ``ExecutionHandle``: start, observe and cancel runs.

The client only writes ``spec`` (create, and ``cancelRequested: true``); the
operator and workers own ``status``. That is why an SDK cancel, a
``kubectl patch`` and a ``kubectl apply`` behave the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal

from . import _journal as journal
from . import _protocol as api
from . import _settings
from ._errors import (
    ExecutionCancelledError,
    ExecutionFailedError,
    ExecutionNotFoundError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    ResultTimeoutError,
)
from ._informer import Change, Informer
from ._kube import Kube
from ._models import Execution, ExecutionList, RunEvent, StepRecord
from ._protocol import batches
from ._stores import KubeStore, StepStore


def _generate_name(workflow_id: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", workflow_id.lower()).strip("-")[:40] or "run"
    return base + "-"


FIELD_MANAGER = "kubestep-sdk"
# Phases only a holder writes, with every record in status: no StepBatch has anything newer. Not
# Failed/WorkerError: a worker that gave up on a run (a status too large to store, say) ends it
# without the records it could not write, and those the batches hold are the end of its history.
_WORKER_WROTE_ALL = frozenset({api.Phase.WAITING, api.Phase.COMPLETED, api.Phase.FAILED})


def _wrote_all(status: dict[str, Any]) -> bool:
    return status.get("phase") in _WORKER_WROTE_ALL and status.get("reason") != api.Reason.WORKER_ERROR


class PostgresHistory:
    """The Postgres step store's history (runs' records, archived chunks, the runs retention
    deleted), for many ``KubestepClient.from_kube`` clients over one connection pool: ``kubestep
    server`` makes a client per caller, with the caller's token, and reads the store with this one
    pool. Needs ``kubestep[postgres]``; ``aclose`` closes the pool."""

    def __init__(self, dsn: str, kube: Kube) -> None:
        try:
            from ._postgres import PostgresStore  # asyncpg only for those who read the Postgres store
        except ImportError as e:
            raise ImportError(
                f"a Postgres step store DSN is set, and reading it needs asyncpg ({e}): pip install 'kubestep[postgres]'"
            ) from None
        self._store = PostgresStore(dsn, kube)

    @staticmethod
    def dsn_from_env() -> str | None:
        """``$KUBESTEP_POSTGRES_DSN``, else the content of the file ``$KUBESTEP_POSTGRES_DSN_FILE``, else None."""
        return _settings.postgres_dsn()

    async def aclose(self) -> None:
        await self._store.close()


class KubestepClient:
    """Talks to the cluster from kubeconfig ($KUBECONFIG, ~/.kube/config) or in-cluster config.

    ``field_manager`` names the client's writes to the apiserver; a cancel records it as who
    asked (``status.cancellation.requestedBy``). ``postgres_dsn`` (default ``$KUBESTEP_POSTGRES_DSN``
    or the file ``$KUBESTEP_POSTGRES_DSN_FILE``): the Postgres step store, read for the records newer
    than a run's checkpoint, its archived chunks, and the runs retention deleted (their final state
    is kept there); needs ``kubestep[postgres]``."""

    def __init__(
        self,
        namespace: str | None = None,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        field_manager: str = FIELD_MANAGER,
        postgres_dsn: str | None = None,
    ) -> None:
        dsn = postgres_dsn or _settings.postgres_dsn()
        self._bind(Kube(kubeconfig, context), namespace, field_manager, owns_kube=True, dsn=dsn)

    @classmethod
    def from_kube(
        cls,
        kube: Kube,
        namespace: str | None = None,
        *,
        field_manager: str = FIELD_MANAGER,
        postgres_dsn: str | None = None,
        postgres: PostgresHistory | None = None,
    ) -> KubestepClient:
        """A client over a connection the caller holds (``kubestep._kube.Kube``) instead of one read
        from kubeconfig: ``kubestep server`` makes each caller's requests over ``Kube.for_token``,
        with the caller's own token, and wraps it in a client per namespace. Cheap (nothing is
        read or opened); ``aclose`` leaves ``kube`` open, since the caller owns it. The environment is
        not read: ``postgres_dsn`` only if given, or ``postgres``, the Postgres step store's pool the
        caller holds (``PostgresHistory``: one for every client the caller makes)."""
        client = cls.__new__(cls)
        client._bind(kube, namespace, field_manager, owns_kube=False, dsn=postgres_dsn)
        if postgres is not None:
            client._store = postgres._store.reader(kube)
        return client

    def _bind(
        self, kube: Kube, namespace: str | None, field_manager: str, *, owns_kube: bool, dsn: str | None = None
    ) -> None:
        self._kube = kube
        self._owns_kube = owns_kube
        self.namespace = namespace or kube.default_namespace or "default"
        self._manager = {"fieldManager": field_manager}
        self._store: StepStore = KubeStore(kube)
        if dsn:
            try:
                from ._postgres import PostgresStore  # asyncpg only for those who read the Postgres store
            except ImportError as e:
                raise ImportError(
                    f"a Postgres step store DSN is set, and reading it needs asyncpg ({e}): "
                    "pip install 'kubestep[postgres]'"
                ) from None
            self._store = PostgresStore(dsn, kube)

    async def aclose(self) -> None:
        await self._store.close()
        if self._owns_kube:
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
        ttl_seconds_after_finished: int | None = None,
    ) -> ExecutionHandle:
        """Creates a WorkflowExecution; the apiserver validates it (schema and CEL).

        ``run_timeout_seconds``: budget of continuous running time; ``queue_timeout_seconds``:
        cancel it if no worker claims it this long after it is queued; ``cancel_grace_period_seconds``:
        how long a step in flight may finish after a stop (default: the installation's, 30 s);
        ``queue``: only workers started with this queue may run it (default: the default queue);
        ``ttl_seconds_after_finished``: the operator deletes the run (and its history) this long after
        it finishes (default: the installation's, ``KUBESTEP_RUN_TTL_SECONDS``; none: kept)."""
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
        if ttl_seconds_after_finished is not None:
            spec["ttlSecondsAfterFinished"] = ttl_seconds_after_finished
        body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": meta, "spec": spec}
        obj = await self._kube.create(self._path(), body, self._manager)
        return ExecutionHandle(self, obj["metadata"]["name"], workflow_id)

    async def get_execution(self, execution_id: str) -> Execution:
        """The run as it is now. Its status is exact: step records its worker has made durable
        since the last status checkpoint (in StepBatches, a few seconds' worth at most) are folded
        in, so ``status.steps`` and ``steps_completed`` count every step that finished. With the
        Postgres store, a finished run deleted since (retention) is read from there."""
        obj = await self._get_or_kept(execution_id)
        newer = await self._batch_entries(obj)
        if newer:
            obj = {**obj, "status": batches.fold(obj.get("status") or {}, newer)}
        return Execution.from_object(obj)

    async def step_history(self, execution_id: str) -> list[StepRecord]:
        """Every step record of a run, in order: those archived in its journal ConfigMaps,
        then ``status.steps``; where a step was recorded twice (run again after failing),
        its last record. With the Postgres store, also of a finished run deleted since (retention)."""
        obj = await self._get_or_kept(execution_id)
        status = obj.get("status") or {}
        archived = await self._store.load(self.namespace, list(status.get("journal") or []), obj["metadata"].get("uid"))
        # Records newer than status's last checkpoint are in the step store (StepBatches, Postgres).
        newer = [e.record for e in await self._batch_entries(obj)]
        records = archived + list(status.get("steps") or []) + newer
        return [StepRecord.model_validate(r) for r in journal.history(records)]

    async def _get_or_kept(self, execution_id: str) -> dict[str, Any]:
        """The run's object; once it is deleted, its final state as the Postgres store kept it."""
        try:
            return await self._get_object(execution_id)
        except ExecutionNotFoundError:
            kept = await self._store.finished(self.namespace, execution_id)
            if kept is None:
                raise
            return kept

    async def _batch_entries(self, obj: dict[str, Any]) -> list[batches.Entry]:
        """A run's entries in the step store that count (``_protocol/batches.py``): none if the
        StepBatch CRD is not installed or the caller may not read them (then history is as of the
        run's last checkpoint, a few seconds old at most while it runs)."""
        status = obj.get("status") or {}
        attempt = int(status.get("attempt") or 0)
        if attempt == 0 or _wrote_all(status):
            return []
        try:
            found = await self._store.entries(self.namespace, obj["metadata"]["uid"])
        except (NotFoundError, ForbiddenError):
            return []
        return batches.counted(status, found, open_attempt=attempt)

    async def list_executions(
        self,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        all_namespaces: bool = False,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> ExecutionList:
        """One page of the runs in the client's namespace (every namespace with ``all_namespaces``),
        like ``kubectl get wfx``: ``label_selector`` (``team=data,kubestep.io/workflow=etl``) and
        ``field_selector`` (``metadata.name=x``) filter them; ``limit`` bounds the page, and the
        answer's ``continue_token``, passed back, fetches the next one (None after the last page).
        ``iter_executions`` walks every page."""
        path = f"/apis/{api.GROUP}/{api.VERSION}/{api.PLURAL}" if all_namespaces else self._path()
        params: dict[str, Any] = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        if limit is not None:
            params["limit"] = str(limit)
        if continue_token:
            params["continue"] = continue_token
        listing = await self._kube.get(path, params or None)
        meta = listing.get("metadata") or {}
        return ExecutionList(
            items=[Execution.from_object(o) for o in listing.get("items") or []],
            continue_token=meta.get("continue") or None,
            resource_version=str(meta.get("resourceVersion") or ""),
        )

    async def iter_executions(
        self,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        all_namespaces: bool = False,
        page_size: int = 500,
    ) -> AsyncIterator[Execution]:
        """Every run that ``list_executions`` would list with the same filters, page after page
        (``page_size`` runs per request), so a namespace of many large runs is never held whole."""
        token: str | None = None
        while True:
            page = await self.list_executions(
                label_selector=label_selector,
                field_selector=field_selector,
                all_namespaces=all_namespaces,
                limit=page_size,
                continue_token=token,
            )
            for execution in page.items:
                yield execution
            token = page.continue_token
            if token is None:
                return

    async def children(self, execution_id: str) -> list[Execution]:
        """The child runs ``execution_id`` started (``ctx.step.invoke``), oldest first: the runs that
        carry its ``kubestep.io/parent`` label and whose ownerReference is this very run (by uid)."""
        uid = (await self.get_execution(execution_id)).uid
        selector = f"{api.family.LABEL_PARENT}={api.family.label_value(execution_id)}"
        mine = [
            e
            async for e in self.iter_executions(label_selector=selector)
            if api.family.parent_of(e.raw) == (execution_id, uid)
        ]
        return sorted(mine, key=lambda e: (e.created_at or dt.datetime.min.replace(tzinfo=dt.UTC), e.id))

    async def events(self, execution_id: str) -> list[RunEvent]:
        """The core/v1 Events about a run (what ``kubectl describe wfx`` lists: queued, claimed,
        cancelled, timed out …), oldest first. Only this run's, not those of an earlier run of the
        same name. Raises ``ExecutionNotFoundError`` if there is no such run."""
        obj = await self._get_object(execution_id)
        selector = f"involvedObject.kind={api.KIND},involvedObject.name={execution_id}"
        if obj["metadata"].get("uid"):
            selector += f",involvedObject.uid={obj['metadata']['uid']}"
        listing = await self._kube.get(f"/api/v1/namespaces/{self.namespace}/events", {"fieldSelector": selector})
        oldest = dt.datetime.min.replace(tzinfo=dt.UTC)
        # Event times are whole seconds: within one, the apiserver's order of writes (resourceVersion)
        # says which came first (a run queued and started in the same second is listed by name).
        events = [(RunEvent.from_object(e), _rv_number(e)) for e in listing.get("items") or []]
        events.sort(key=lambda pair: (pair[0].last_seen or pair[0].first_seen or oldest, pair[1]))
        return [event for event, _ in events]

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
        now), like ``kubectl delete --grace-period``. ``request_cancel`` is the same request,
        answering with the run itself."""
        try:
            execution = await self.request_cancel(execution_id, reason, grace_period_seconds)
        except ExecutionNotFoundError:
            return False
        return not execution.finished

    async def request_cancel(
        self, execution_id: str, reason: str | None = None, grace_period_seconds: int | None = None
    ) -> Execution:
        """``cancel_execution``'s request, answering with the run as it left it: one that had
        already finished, unchanged (``finished`` is True: nothing was written), else the run with
        its cancel requested (``cancellation`` says when and by whom). Raises
        ``ExecutionNotFoundError`` if there is no such run. Repeating it is harmless: the flag is
        set once, the first reason given is kept, and a grace period only ever shortens."""
        path = self._path(execution_id)
        try:
            obj = await self._kube.get(path)
            if (obj.get("status") or {}).get("phase") in api.TERMINAL_PHASES:
                return Execution.from_object(obj)  # leave a finished run's object alone
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
            raise ExecutionNotFoundError(f"no execution {execution_id!r} in namespace {self.namespace}") from None
        return Execution.from_object(obj)

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

    async def watch_execution(self, execution_id: str) -> AsyncGenerator[Execution]:
        """The run as it is now, then again after every change, for as long as the caller iterates.
        Raises ``ExecutionNotFoundError`` if there is no such run, and when it is deleted.

        It rides out what a long watch meets (the server ending it, a cut connection, a refused
        watch, an expired resourceVersion) by the rules of ``kubestep._informer``; after a re-list
        the current state may come again."""
        params = {"fieldSelector": f"metadata.name={execution_id}"}
        seen = False
        async with contextlib.aclosing(self._follow(self._path(), params, "execution")) as changes:
            async for item in changes:
                if isinstance(item, set):  # a complete list
                    if not item:
                        what = "was deleted" if seen else f"does not exist in namespace {self.namespace}"
                        raise ExecutionNotFoundError(f"execution {execution_id!r} {what}")
                    continue
                if item.kind == "DELETED":
                    raise ExecutionNotFoundError(f"execution {execution_id!r} was deleted")
                seen = True
                yield Execution.from_object(item.obj)

    async def watch_executions(
        self, *, label_selector: str | None = None, all_namespaces: bool = False
    ) -> AsyncGenerator[ExecutionChange]:
        """Every run of the namespace (or of every namespace) as it is now (``listed``), then every
        change, for as long as the caller iterates. A run deleted while the watch was broken off
        still comes as ``DELETED``, found by the next list."""
        path = f"/apis/{api.GROUP}/{api.VERSION}/{api.PLURAL}" if all_namespaces else self._path()
        params = {"labelSelector": label_selector} if label_selector else {}
        last: dict[tuple[str, str], Execution] = {}
        async with contextlib.aclosing(self._follow(path, params, "executions")) as changes:
            async for item in changes:
                if isinstance(item, set):  # a complete list: what it no longer holds was deleted meanwhile
                    for key in [k for k in last if k not in item]:
                        yield ExecutionChange("DELETED", last.pop(key))
                    continue
                execution = Execution.from_object(item.obj)
                if item.kind == "DELETED":
                    last.pop(item.key, None)
                else:
                    last[item.key] = execution
                yield ExecutionChange(item.kind, execution, item.listed)

    async def _follow(
        self, path: str, params: dict[str, str], name: str
    ) -> AsyncGenerator[Change | set[tuple[str, str]]]:
        """An informer's changes and complete lists, as an iterator; the informer stops with it."""
        queue: asyncio.Queue[Change | set[tuple[str, str]]] = asyncio.Queue()
        informer = Informer(self._kube, path, queue.put_nowait, queue.put_nowait, params=params, name=name)
        task = asyncio.create_task(informer.run())
        try:
            while True:
                if not queue.empty():  # what the informer said before it ended, too
                    yield queue.get_nowait()
                    continue
                if task.done():
                    task.result()  # the informer ended: what it raised
                    raise RuntimeError(f"the informer of {path} ended")
                get = asyncio.ensure_future(queue.get())
                await asyncio.wait({get, task}, return_when=asyncio.FIRST_COMPLETED)
                if get.done():
                    yield get.result()
                else:
                    get.cancel()
        finally:
            task.cancel()
            await asyncio.wait({task})  # without raising what it raised: the caller's own error wins
            if not task.cancelled():
                task.exception()  # retrieved: raised above already where it mattered

    async def wait(self, execution_id: str, timeout: float | None = None) -> Execution:
        """Follows the execution until it reaches a terminal phase (``watch_execution``)."""

        async def follow() -> Execution:
            async with contextlib.aclosing(self.watch_execution(execution_id)) as states:
                async for execution in states:
                    if execution.finished:
                        return execution
            raise ExecutionNotFoundError(f"execution {execution_id!r}: no state")  # not reached: it raises

        try:
            return await asyncio.wait_for(follow(), timeout)
        except TimeoutError:
            raise ResultTimeoutError(f"execution {execution_id} did not finish within {timeout} s") from None


@dataclasses.dataclass(frozen=True)
class ExecutionChange:
    """One run as a namespace's watch saw it (``KubestepClient.watch_executions``)."""

    kind: Literal["ADDED", "MODIFIED", "DELETED"]
    execution: Execution
    listed: bool = False  # from a list (the state when the watch started or started again)


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


def _rv_number(obj: dict[str, Any]) -> int:
    rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return int(rv) if rv.isdigit() else 0


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
