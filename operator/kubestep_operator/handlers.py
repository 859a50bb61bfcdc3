"""The kopf registrations: two indexes, two event handlers, start-up and clean-up.

Raw event handlers (``@kopf.on.event``) are level-triggered: every event of
an execution re-runs ``reconciling.decide`` on its latest state. Unlike
change-detecting handlers they write no diff-base or progress annotations,
so the operator's only writes are the status transitions themselves, each
conditional on the resourceVersion it decided on. A write that loses a race
is dropped: the change that beat it arrives as the next event and is decided
afresh.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
from collections.abc import Hashable
from typing import Any

import httpx
import kopf

from kubestep import _api as api
from kubestep._errors import ApiError, ConflictError, InvalidError, NotFoundError
from kubestep._kube import Kube, background

from . import measuring
from .reconciling import OPERATOR, Liveness, Snapshot, decide
from .scheduling import Scheduler

logger = logging.getLogger("kubestep.operator")

LEASE_GROUP, LEASE_VERSION, LEASES = "coordination.k8s.io", "v1", "leases"
WORKER_LEASES = {api.LABEL_WORKER: "true"}


@dataclasses.dataclass
class Operator:
    kube: Kube
    lease_grace: dt.datetime
    scheduler: Scheduler = dataclasses.field(init=False)
    scheduler_task: asyncio.Task[None] | None = None
    executions: kopf.Index[Any, Any] | None = None
    workers: kopf.Index[Any, Any] | None = None
    ignored: set[tuple[str, int | None]] = dataclasses.field(default_factory=set)
    served: dict[tuple[str, str], frozenset[str]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(self.fire)
        measuring.SCHEDULED.set_function(lambda: len(self.scheduler))
        measuring.UNFINISHED.set_function(lambda: len(self.executions) if self.executions is not None else 0)

    def bind(self, executions: kopf.Index[Any, Any], workers: kopf.Index[Any, Any]) -> None:
        self.executions, self.workers = executions, workers

    # ----- lookups over the indexes -----------------------------------------------------------

    def snapshot(self, key: tuple[str, str]) -> Snapshot | None:
        store = self.executions.get(key) if self.executions is not None else None
        return next(iter(store), None) if store else None

    def liveness(self, namespace: str, worker: str) -> Liveness | None:
        store = self.workers.get((namespace, worker)) if self.workers is not None else None
        return next(iter(store), None) if store else None

    def live_workflows(self, namespace: str, now: dt.datetime) -> frozenset[str]:
        served: set[str] = set()
        for (ns, _), store in (self.workers or {}).items():
            if ns == namespace:
                for live in store:
                    if live.expires > now:
                        served |= live.workflows
        return frozenset(served)

    # ----- acting -----------------------------------------------------------------------------

    async def reconcile(self, s: Snapshot) -> None:
        now = api.now()
        d = decide(s, now, self.liveness, self.live_workflows(s.namespace, now), self.lease_grace)
        if d.patch is not None:
            path = api.execution_path(s.namespace, s.name, "status")
            try:
                if d.guard is None:
                    await self.kube.merge_patch(path, {"status": d.patch}, s.resource_version)
                else:
                    await self.kube.guarded_patch(path, d.patch, d.guard)
            except (ConflictError, InvalidError, NotFoundError):
                measuring.LOST_RACES.inc()
                return  # it changed: the next event decides again
            except (ApiError, httpx.HTTPError) as e:
                # kopf does not retry event handlers: the scheduler does.
                measuring.WRITE_ERRORS.inc()
                logger.error("writing status of %s/%s failed: %r", s.namespace, s.name, e)
                self.scheduler.schedule(s.key, now + dt.timedelta(seconds=1))
                return
            measuring.TRANSITIONS.labels(str(d.patch.get("phase", s.phase)), str(d.patch.get("reason", ""))).inc()
            if d.event is not None:
                self.event(s.body_ref, *d.event)
            return
        self.scheduler.schedule(s.key, d.next_due)

    def event(self, ref: dict[str, Any], type_: str, reason: str, message: str) -> None:
        background(self.kube.post_event(ref, type_=type_, reason=reason, message=message, component=OPERATOR))

    async def fire(self, key: Hashable) -> None:
        assert isinstance(key, tuple)
        if key[0] == "lease":  # a worker's lease may have expired: queued runs may lose their worker
            await self.recheck(key[1], held_by=key[2])
            return
        s = self.snapshot((key[0], key[1]))
        if s is not None:
            await self.reconcile(s)

    async def recheck(self, namespace: str, held_by: str | None = None) -> None:
        """Re-decides the queued runs of a namespace (and the runs ``held_by`` holds)."""
        for (ns, _), store in list((self.executions or {}).items()):
            if ns != namespace:
                continue
            for s in list(store):
                if s.phase == api.QUEUED or (held_by is not None and s.worker == held_by):
                    await self.reconcile(s)


_operator: Operator | None = None


def _op() -> Operator:
    assert _operator is not None, "the operator has not started"
    return _operator


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _operator
    settings.posting.level = logging.WARNING  # our own Events tell the story; kopf posts only trouble
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.kubestep.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kopf.kubestep.io")
    lease_seconds = float(os.environ.get("KUBESTEP_LEASE_SECONDS", "15"))
    _operator = Operator(kube=Kube(), lease_grace=api.now() + dt.timedelta(seconds=lease_seconds))
    _operator.scheduler_task = asyncio.create_task(_operator.scheduler.run())


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if _operator is not None:
        if _operator.scheduler_task is not None:
            _operator.scheduler_task.cancel()
        await _operator.kube.aclose()


@kopf.index(api.GROUP, api.VERSION, api.PLURAL)
def executions(body: kopf.Body, **_: Any) -> dict[tuple[str, str], Snapshot] | None:
    """Every unfinished execution's snapshot: the scheduler's source of truth."""
    phase = (body.get("status") or {}).get("phase")
    if phase in api.TERMINAL_PHASES:
        return None
    s = Snapshot.from_body(body)
    return {s.key: s}


@kopf.index(LEASE_GROUP, LEASE_VERSION, LEASES, labels=WORKER_LEASES)
def workers(body: kopf.Body, namespace: str | None, **_: Any) -> dict[tuple[str | None, str], Liveness] | None:
    """Worker liveness, from the Leases workers renew."""
    spec = body.get("spec") or {}
    holder, renew = spec.get("holderIdentity"), api.parse_time(spec.get("renewTime"))
    if not holder or renew is None:
        return None
    expires = renew + dt.timedelta(seconds=int(spec.get("leaseDurationSeconds") or 15))
    served = body.get("metadata", {}).get("annotations", {}).get(api.ANNOTATION_WORKFLOWS, "")
    return {(namespace, holder): Liveness(expires, frozenset(w for w in served.split(",") if w))}


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def execution_event(event: kopf.RawEvent, body: kopf.Body, **kwargs: Any) -> None:
    op = _op()
    op.bind(kwargs["executions"], kwargs["workers"])  # the indexes, passed by name
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    if event.get("type") == "DELETED":
        op.scheduler.schedule(key, None)
        return
    s = Snapshot.from_body(body)
    if s.phase in api.TERMINAL_PHASES:
        op.scheduler.schedule(key, None)
        ended_by_it = s.phase == api.CANCELLED and (s.cancellation or {}).get("reason") == api.REQUESTED
        if s.cancel_requested and not ended_by_it and (s.uid, s.generation) not in op.ignored:
            # Not a transition: status stays as it is. Said once per request (per generation).
            op.ignored.add((s.uid, s.generation))
            op.event(s.body_ref, "Normal", "CancelIgnored", f"run already {s.phase}; cancellation has no effect")
        return
    await op.reconcile(s)


@kopf.on.event(LEASE_GROUP, LEASE_VERSION, LEASES, labels=WORKER_LEASES)
async def lease_event(event: kopf.RawEvent, body: kopf.Body, **kwargs: Any) -> None:
    op = _op()
    op.bind(kwargs["executions"], kwargs["workers"])
    namespace = body["metadata"]["namespace"]
    holder = (body.get("spec") or {}).get("holderIdentity") or ""
    if event.get("type") == "DELETED":
        op.served.pop((namespace, holder), None)
        await op.recheck(namespace, held_by=holder)
        return
    live = op.liveness(namespace, holder)
    if live is None:
        return
    op.scheduler.schedule(("lease", namespace, holder), live.expires)
    if op.served.get((namespace, holder)) != live.workflows:
        op.served[(namespace, holder)] = live.workflows
        await op.recheck(namespace)
