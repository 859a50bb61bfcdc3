"""The operator at work: what it knows of runs and workers, and how it turns decisions into writes.

Level-triggered: every event of a run re-runs ``reconciling.decide`` on its latest state, and the same
function serves scheduler wake-ups. Reacting never waits for the network: a decision to write offers the
run to the write backlog, which a fixed number of writers drain, stopping decisions first
(``writing.py``); each write is conditional on the state it was decided on, and one that loses a race
is dropped, because the change that beat it arrives as the next event and is decided afresh. One the
apiserver refuses as invalid lost no race (``kubestep._errors.lost_race`` tells them apart): it is
reported on the run and retried with backoff.

What it knows comes from two informers (``watching.py``): every unfinished run's latest snapshot, and the
liveness of every worker Lease. Runs are decided only once the Leases have been listed, so a restarted
operator never mistakes live workers for gone ones.

The same informer of runs keeps, for every run in scope (finished ones too), what the step journal's
collector needs to know (``collecting.Journals``); the acting replica sweeps the StepBatches no run
needs any more every ``collect_seconds`` (``collecting.py``).

Retention: a finished run with a TTL (``spec.ttlSecondsAfterFinished``, else ``run_ttl_seconds``) is kept
in a third store, ``expiring`` (its uid and when it expires, ``reconciling.expires_at``), and the one
scheduler holds its expiry under an ``ExpiryKey``. When that fires, the deletion goes to the write backlog
at the lowest urgency (after every write that moves a run) and a writer DELETEs the run with its uid as a
precondition, so a run re-created under the same name is never deleted by a stale plan; Background
propagation lets the garbage collector take its journal ConfigMaps, and the collector its StepBatches.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import logging
import time
from collections.abc import Hashable
from typing import Any

from kubestep import _protocol as api
from kubestep._errors import ApiError, ForbiddenError, InvalidError, NotFoundError, TransportError, lost_race
from kubestep._kube import Kube

from . import measuring
from .collecting import Collector, Journals
from .keys import ExpiryKey, LeaseKey, RunKey
from .kinship import Kinship
from .reconciling import (
    OPERATOR,
    Decision,
    Liveness,
    Snapshot,
    Urgency,
    body_ref,
    cancel_requested,
    decide,
    expires_at,
    urgency,
)
from .recording import Recorder
from .scheduling import Scheduler
from .watching import Scope, scoped_informer
from .writing import Backlog, retry_delay

logger = logging.getLogger("kubestep.operator")

LEASES_PATH = "/apis/coordination.k8s.io/v1"
WORKER_LEASES = {"labelSelector": f"{api.LABEL_WORKER}=true"}


@dataclasses.dataclass(frozen=True)
class Expiry:
    """A finished run the operator deletes at ``at``, as it was judged: its uid and resourceVersion (the
    DELETE's preconditions: a run changed since, its TTL lengthened say, is judged again on that change)."""

    uid: str
    at: dt.datetime
    resource_version: str | None = None


def liveness_of(lease: dict[str, Any], now: dt.datetime) -> tuple[LeaseKey, Liveness] | None:
    """What a worker's Lease says: until when the worker counts as alive, and what it serves.

    Only the Lease named after its holder counts (``kubestep-worker-<identity>``, the one the worker
    itself writes): a copy or decoy naming another worker would otherwise keep a crashed worker's runs
    held for ever, or let a second Lease's deletion end a live worker's. Its times are clamped
    (``api.lease_expiry``)."""
    spec, meta = lease.get("spec") or {}, lease.get("metadata") or {}
    holder = spec.get("holderIdentity")
    if not holder or not isinstance(holder, str) or meta.get("name") != api.LEASE_PREFIX + holder:
        return None
    expires = api.lease_expiry(lease, now)
    if expires is None:
        return None
    served = (meta.get("annotations") or {}).get(api.ANNOTATION_WORKFLOWS, "")
    workflows = frozenset(w for w in str(served).split(",") if w)
    sources = frozenset(api.lease_sources(lease).items())
    return LeaseKey(meta["namespace"], holder), Liveness(
        expires, workflows, sources=sources, queue=api.lease_queue(lease)
    )


@dataclasses.dataclass
class Controller:
    kube: Kube  # status writes and Events: sized to the writers and event senders
    watch: Kube  # the informers' long watches, on connections of their own
    scopes: list[Scope]
    lease_grace: dt.datetime  # a holder without a known Lease counts as gone from then on
    blind_until: dt.datetime | None = None  # one lease after the Leases had to be listed again
    lease_seconds: float = 15.0  # how long a worker that stopped renewing still counts as alive
    grace_seconds: float = 30.0  # the grace period of runs whose spec does not set one
    cancel_audit: bool = False  # the chart's cancelAudit policies vouch for the canceller annotation
    list_bytes: int = 4 << 20  # what a page of runs should weigh when listing (``kubestep._informer``)
    writers: int = 8  # writes in flight at most
    collect_seconds: float = 15.0  # StepBatch collection sweeps (``collecting.py``); 0: none
    run_ttl_seconds: int | None = None  # retention of finished runs whose spec sets no TTL; None: kept
    event_senders: int = 2
    executions: dict[RunKey, Snapshot] = dataclasses.field(default_factory=dict)  # unfinished runs
    expiring: dict[RunKey, Expiry] = dataclasses.field(default_factory=dict)  # finished runs with a TTL
    workers: dict[LeaseKey, Liveness] = dataclasses.field(default_factory=dict)
    # What was said once per generation of a run (``once``): its uid, generation, and what was said.
    ignored: dict[RunKey, tuple[str | None, int | None, frozenset[str]]] = dataclasses.field(default_factory=dict)
    failures: dict[RunKey | ExpiryKey, int] = dataclasses.field(default_factory=dict)  # failed writes in a row
    announced: set[RunKey] = dataclasses.field(default_factory=set)  # unfinished runs whose cancel was told
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self._leases_seen: set[Scope] = set()
        self.scheduler = Scheduler(self.fire)
        self.backlog: Backlog[RunKey | ExpiryKey] = Backlog()
        self._deny_said = False  # a refused delete (RBAC) is said once at WARNING
        self.recorder = Recorder(self.kube, OPERATOR)
        self.lease_informers = [
            scoped_informer(self.watch, _leases_path(s), s, self.on_lease, self.leases_listed, dict(WORKER_LEASES))
            for s in self.scopes
        ]
        self.run_informers = [
            scoped_informer(
                self.watch,
                api.execution_path(s.namespace) if s.namespace else f"/apis/{api.GROUP}/{api.VERSION}/{api.PLURAL}",
                s,
                self.on_execution,
                self.executions_listed,
                page_bytes=self.list_bytes,
            )
            for s in self.scopes
        ]
        # Every run in scope, finished ones too, for the StepBatch collector (``collecting.py``).
        self.journals = Journals()
        self.kinship = Kinship()  # every run's parent link, for the cascade and waits on children
        self.collector = Collector(
            self.kube,
            self.scopes,
            self.journals,
            dict(zip(self.scopes, self.run_informers, strict=True)),
            self.collect_seconds,
        )
        measuring.SCHEDULED.set_function(lambda: len(self.scheduler))
        measuring.UNFINISHED.set_function(lambda: len(self.executions))
        measuring.EXPIRING.set_function(lambda: len(self.expiring))
        for level in Urgency:
            measuring.BACKLOG.labels(level.name).set_function(functools.partial(self.backlog.count, level))
        measuring.WRITES_IN_FLIGHT.set_function(lambda: self.backlog.busy)
        measuring.EVENTS_QUEUED.set_function(lambda: len(self.recorder))

    # ----- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._spawn(self.scheduler.run(), "scheduler")
        for i in range(self.writers):
            self._spawn(self.write_loop(), f"writer-{i}")
        for i in range(self.event_senders):
            self._spawn(self.recorder.send(), f"event-sender-{i}")
        for informer in self.lease_informers:
            self._spawn(informer.run(), f"informer {informer.path}")
        self._spawn(self._watch_runs(), "informers of runs")
        if self.collect_seconds > 0:
            self._spawn(self.collector.run(), "StepBatch collector")
        if self.run_ttl_seconds is not None:
            logger.info(
                "finished runs whose spec sets no ttlSecondsAfterFinished are deleted %d s after they finish",
                self.run_ttl_seconds,
            )

    async def _watch_runs(self) -> None:
        # Workers first: deciding on runs before every live Lease is known would mark served runs
        # NoWorker and back, thousands of needless writes after a restart.
        await asyncio.gather(*(i.listed.wait() for i in self.lease_informers))
        await asyncio.gather(*(i.run() for i in self.run_informers))

    def _spawn(self, coro: Any, name: str) -> None:
        self.tasks.append(asyncio.create_task(coro, name=name))

    def dead(self) -> list[str]:
        """The loops that ended although they never should (each runs until ``stop``): the probe
        fails on any, so the kubelet restarts the operator within seconds instead of it deciding
        nothing with a green probe."""
        return [
            f"{t.get_name()}: {t.exception()!r}" if not t.cancelled() else t.get_name() for t in self.tasks if t.done()
        ]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.kube.aclose()
        await self.watch.aclose()

    def health(self) -> dict[str, Any]:
        """For the liveness probe: how long since each informer last heard from the apiserver."""
        now = time.monotonic()
        informers = self.lease_informers + self.run_informers
        return {
            "dead": self.dead(),
            "listed": all(i.listed.is_set() for i in informers),
            "silent_seconds": round(max((now - i.last_contact for i in informers), default=0.0), 1),
            "unfinished_runs": len(self.executions),
            "expiring_runs": len(self.expiring),
            "backlog": len(self.backlog),
        }

    # ----- what the informers report ----------------------------------------------------------

    def on_execution(self, kind: str, body: dict[str, Any]) -> None:
        self.journals.seen(kind, body)
        meta = body["metadata"]
        key = RunKey(meta["namespace"], meta["name"])
        if kind == "DELETED":
            self.forget(key)
            self.unexpire(key)
            self.ignored.pop(key, None)
            self._look_again(self.kinship.gone(key))
            return
        said = self.ignored.get(key)
        if said is not None and said[:2] != (meta.get("uid"), meta.get("generation")):
            del self.ignored[key]  # a newer generation (or a new run of that name): what was said is moot
        try:
            s = Snapshot.from_body(body, self.grace_seconds, self.cancel_audit)
        except Exception as e:  # a malformed object: this run only
            self.forget(key)
            self.unexpire(key)  # kept: nothing is deleted on what could not be read
            if self.once(key, meta.get("uid"), meta.get("generation"), "unreadable"):
                self._object_failed("read", body_ref(body), e, then="it ignores the run until it changes")
            return
        again = self.kinship.seen(body)
        if (
            s.cancel_requested
            and key not in self.announced
            and (s.phase not in api.TERMINAL_PHASES or key in self.executions)
        ):
            # Once per run, as soon as it is seen: also for a run its holder ends at once (no
            # Cancelling), but not for runs that were already over when the operator (re)started.
            self.announced.add(key)
            self.recorder.post(s.body_ref, *cancel_requested(s))
        # Its children, if it now stops (the cascade); its parent, if it now ended (a wait on it).
        self._look_again([*again[0], *again[1]])
        if s.phase in api.TERMINAL_PHASES:
            self.forget(key)
            self.retain(s)
            ended_by_it = (
                s.phase == api.Phase.CANCELLED and (s.cancellation or {}).get("reason") == api.StopReason.REQUESTED
            )
            if (
                s.cancel_requested
                and not ended_by_it
                and self.once(key, meta.get("uid"), meta.get("generation"), "cancel ignored")
            ):
                # Not a transition: status stays as it is. Said once per request (per generation).
                self.recorder.post(
                    s.body_ref, "Normal", "CancelIgnored", f"run already {s.phase}; cancellation has no effect"
                )
            return
        self.unexpire(key)  # unfinished: a new run under the name of a finished one
        self.executions[key] = s
        self.consider(s)

    def once(self, key: RunKey, uid: str | None, generation: int | None, what: str) -> bool:
        """True the first time ``what`` is said of this generation of the run: an unreadable run is
        reported, a cancel of a finished run answered, once per generation. Kept per run and dropped
        with it (deleted, or its generation superseded), so it holds no more than the runs that exist."""
        said = self.ignored.get(key)
        told = said[2] if said is not None and said[:2] == (uid, generation) else frozenset()
        if what in told:
            return False
        self.ignored[key] = (uid, generation, told | {what})
        return True

    def executions_listed(self, scope: Scope, present: set[tuple[str, str]]) -> None:
        """After a (re-)list: runs deleted while the watch was down are forgotten."""
        self.journals.listed(scope.accept, present)
        orphaned = self.kinship.listed(scope.accept, present)
        for key in [k for k in self.executions if scope.accept(k.namespace) and (k.namespace, k.name) not in present]:
            self.forget(key)
        for key in [k for k in self.ignored if scope.accept(k.namespace) and (k.namespace, k.name) not in present]:
            del self.ignored[key]
        for key in [k for k in self.expiring if scope.accept(k.namespace) and (k.namespace, k.name) not in present]:
            self.unexpire(key)
        self._look_again(orphaned)  # parents of children deleted meanwhile: a wait on them may be over

    def on_lease(self, kind: str, body: dict[str, Any]) -> None:
        try:
            found = liveness_of(body, api.now())
        except Exception as e:  # a malformed Lease must not stop the informer
            self._object_failed("read the Lease", body, e, post=False)
            return
        if found is None:
            return
        key, live = found
        if kind == "DELETED":
            # Not proof that the worker is gone (anyone who may delete Leases can): it counts as
            # alive until its last renewal runs out, as if it had stopped renewing (``Liveness``).
            before = self.workers.get(key)
            if before is not None:
                self.workers[key] = dataclasses.replace(before, deleted=True)
                self.recheck(key.namespace)  # its workflows are no longer served
            return
        before = self.workers.get(key)
        self.workers[key] = live
        self.scheduler.schedule(key, live.expires)
        if before is None or (before.workflows, before.sources, before.queue) != (
            live.workflows,
            live.sources,
            live.queue,
        ):
            self.recheck(key.namespace)  # what is served changed: queued runs may gain or lose a worker

    def leases_listed(self, scope: Scope, present: set[tuple[str, str]]) -> None:
        # Leases are keyed by holder, not by name: a re-list simply re-adds the live ones, and one
        # deleted while the watch was down expires like any other (the scheduler looks at it then).
        # A list after the first means the watch broke, most often because the apiserver or etcd
        # restarted, when no worker could renew either: give holders one lease to renew before
        # their runs are called lost (``decide``'s ``blind_until``). The chaos soak found steps run
        # twice when runs were re-queued the moment the apiserver came back.
        if scope in self._leases_seen:
            self.blind_until = api.now() + dt.timedelta(seconds=self.lease_seconds)
        self._leases_seen.add(scope)

    # ----- lookups ----------------------------------------------------------------------------

    def liveness(self, namespace: str, worker: str) -> Liveness | None:
        return self.workers.get(LeaseKey(namespace, worker))

    def live_workflows(self, namespace: str, now: dt.datetime, queue: str = "") -> frozenset[str]:
        """Every workflow a live worker of ``namespace`` serves on ``queue``."""
        served: set[str] = set()
        for key, live in self.workers.items():
            if key.namespace == namespace and live.queue == queue and live.expires > now and not live.deleted:
                served |= live.workflows
        return frozenset(served)

    def conflict(self, namespace: str, workflow: str, now: dt.datetime, queue: str = "") -> str | None:
        """Which different code live workers of ``namespace`` serve ``workflow`` with on ``queue``, if
        more than one."""
        codes: dict[str, list[str]] = {}
        for key, live in self.workers.items():
            if key.namespace == namespace and live.queue == queue and live.expires > now and not live.deleted:
                for wid, source in live.sources:
                    if wid == workflow:
                        codes.setdefault(source, []).append(key.holder)
        if len(codes) < 2:
            return None
        said = "; ".join(f"{source} (worker {', '.join(sorted(who))})" for source, who in sorted(codes.items()))
        return (
            f"workflow {workflow!r} is served in namespace {namespace} by different code: {said}. Either may "
            f"claim the run and replay would fail on the other's code: give the workflows distinct ids"
        )

    def _look_again(self, keys: list[RunKey]) -> None:
        for k in keys:
            other = self.executions.get(k)
            if other is not None:
                self.consider(other)

    def decide(self, s: Snapshot, now: dt.datetime) -> Decision:
        if s.parent is not None or s.waiting_for_children:
            s = dataclasses.replace(
                s,
                parent_stopped=self.kinship.parent_stop(s.key, s.parent),
                children_done=bool(s.waiting_for_children)
                and self.kinship.all_ended(s.namespace, s.waiting_for_children),
            )
        return decide(
            s,
            now,
            self.liveness,
            self.live_workflows(s.namespace, now, s.queue),
            self.lease_grace,
            self.lease_seconds,
            self.blind_until,
            self.conflict(s.namespace, s.workflow, now, s.queue) if s.phase in (None, api.Phase.QUEUED) else None,
        )

    # ----- acting -----------------------------------------------------------------------------

    def consider(self, s: Snapshot) -> None:
        """Decides on ``s`` now without waiting for anything: a write goes to the backlog, and
        otherwise the scheduler is told when to look again."""
        now = api.now()
        try:
            d = self.decide(s, now)
        except Exception as e:  # a bug or an object nobody foresaw: this run only, never the others
            self._object_failed(
                "decide on", s.body_ref, e, post=s.key not in self.failures, then="it retries with backoff"
            )
            self.retry(s.key, now)
            return
        if d.patch is None:
            self.scheduler.schedule(s.key, d.next_due)
        else:
            self.backlog.offer(s.key, urgency(s, d))

    def _object_failed(
        self, what: str, body: dict[str, Any], e: BaseException, *, post: bool = True, then: str = ""
    ) -> None:
        """One object could not be handled: logged with its name, counted, and told on the run itself
        (a Warning Event) where there is one. Everything else goes on."""
        meta = body.get("metadata") or {}
        where = f"{meta.get('namespace')}/{meta.get('name')}"
        measuring.OBJECT_ERRORS.labels(what.split()[0]).inc()
        logger.error("could not %s %s: %r", what, where, e, exc_info=e)
        if post and body.get("kind", api.KIND) == api.KIND and meta.get("uid"):
            message = f"the operator could not {what} this run ({type(e).__name__}: {e}); {then}"
            self.recorder.post(body, "Warning", "OperatorError", message[:1000])

    async def write_loop(self) -> None:
        """One writer: takes the most urgent pending run, decides again on its latest state, writes."""
        while True:
            key = await self.backlog.take()
            try:
                if isinstance(key, ExpiryKey):
                    await self.expire(key)
                else:
                    await self.write(key)
            except Exception:  # a bug must not kill the writer: log, and look again later
                logger.exception("deciding %s failed", key)
                self.retry(key, api.now())
            finally:
                self.backlog.done(key)

    async def write(self, key: RunKey) -> None:
        s = self.executions.get(key)
        if s is None:  # finished or deleted since it was offered
            self.failures.pop(key, None)
            return
        now = api.now()
        d = self.decide(s, now)  # the state may have moved on since the offer: decide afresh
        if d.patch is None:
            self.scheduler.schedule(key, d.next_due)
            return
        path = api.execution_path(s.namespace, s.name, "status")
        level = urgency(s, d)
        started = time.monotonic()
        try:
            if d.guard is None:
                await self.kube.merge_patch(path, {"status": d.patch}, s.resource_version)
            else:
                await self.kube.guarded_patch(path, d.patch, d.guard)
        except (ApiError, TransportError) as e:
            if isinstance(e, NotFoundError) or lost_race(e):
                measuring.LOST_RACES.inc()
                self.failures.pop(key, None)
                return  # it changed (or is gone): the next event decides again
            if isinstance(e, InvalidError):
                # Refused for what it writes (schema or CEL validation), not for a race: the same
                # decision would be refused again. Logged, told on the run (a Warning Event), counted
                # (``OBJECT_ERRORS``, stage "write"), and retried with backoff.
                self._object_failed(
                    "write the status of", s.body_ref, e, post=key not in self.failures, then="it retries with backoff"
                )
                self.retry(key, now)
                return
            measuring.WRITE_ERRORS.inc()
            logger.error("writing status of %s failed: %r", key, e)
            self.retry(key, now)
            return
        measuring.WRITE_SECONDS.labels(level.name).observe(time.monotonic() - started)
        self.failures.pop(key, None)
        measuring.TRANSITIONS.labels(str(d.patch.get("phase", s.phase)), str(d.patch.get("reason", ""))).inc()
        if d.event is not None:
            self.recorder.post(s.body_ref, *d.event)

    def retry(self, key: RunKey | ExpiryKey, now: dt.datetime) -> None:
        """Looks again after a backoff with jitter: outside the backlog, so retries never crowd it."""
        failures = self.failures[key] = self.failures.get(key, 0) + 1
        self.scheduler.schedule(key, now + dt.timedelta(seconds=retry_delay(failures)))

    def forget(self, key: RunKey) -> None:
        """The run finished or is gone: nothing more to decide or write."""
        self.executions.pop(key, None)
        self.scheduler.schedule(key, None)
        self.backlog.discard(key)
        self.failures.pop(key, None)
        self.announced.discard(key)

    # ----- retention ---------------------------------------------------------------------------

    def retain(self, s: Snapshot) -> None:
        """A finished run: plans its deletion at the end of its TTL, or drops the plan if none applies
        (any more: its spec's TTL removed with no default, or it is being deleted already)."""
        at = expires_at(s, self.run_ttl_seconds)
        if at is None or not s.uid:
            self.unexpire(s.key)
            return
        self.expiring[s.key] = Expiry(s.uid, at, s.resource_version)
        self.scheduler.schedule(ExpiryKey(s.namespace, s.name), at)  # one already due fires at once

    def unexpire(self, key: RunKey) -> None:
        """No deletion is planned for ``key`` any more (it is gone, unfinished, or kept)."""
        if self.expiring.pop(key, None) is None:
            return
        ek = ExpiryKey(key.namespace, key.name)
        self.scheduler.schedule(ek, None)
        self.backlog.discard(ek)
        self.failures.pop(ek, None)

    async def expire(self, key: ExpiryKey) -> None:
        """Deletes a finished run whose TTL ran out: a DELETE on its uid and resourceVersion (a run re-created
        under its name is another object, and one changed since it was judged is judged again on the event
        that tells the change: the apiserver refuses either with 409), Background propagation (the garbage
        collector deletes its journal ConfigMaps; the StepBatches go with the collector's next sweeps).
        Not posted as an Event (it would outlive nothing worth reading): logged, and counted."""
        e = self.expiring.get(key.run)
        if e is None:  # gone, re-created unfinished, or kept since it was offered
            self.failures.pop(key, None)
            return
        now = api.now()
        if now < e.at:  # planned again (a longer TTL) since it was offered
            self.scheduler.schedule(key, e.at)
            return
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
            "preconditions": {"uid": e.uid, **({"resourceVersion": e.resource_version} if e.resource_version else {})},
        }
        try:
            await self.kube.request("DELETE", api.execution_path(key.namespace, key.name), json_body=options)
        except (ApiError, TransportError) as err:
            if isinstance(err, NotFoundError):
                self._expired(key, e)  # already gone: what was asked is done
                logger.debug("%s/%s was gone already when its TTL ran out", key.namespace, key.name)
                return
            if isinstance(err, ApiError) and err.status_code == 409:
                # Another run holds the name now, or this one changed since it was judged: the event that
                # tells it plans again (``retain``).
                self._expired(key, e)
                return
            if isinstance(err, ForbiddenError):
                # Retrying every run would only repeat the refusal: said once, kept until the next
                # event of the run or a restart of the operator with the RBAC fixed.
                self._expired(key, e)
                level = logging.DEBUG if self._deny_said else logging.WARNING
                self._deny_said = True
                logger.log(
                    level,
                    "could not delete %s/%s at the end of its TTL (%s): the operator's RBAC must allow delete "
                    "of workflowexecutions; finished runs are kept",
                    key.namespace,
                    key.name,
                    err,
                )
                return
            measuring.WRITE_ERRORS.inc()
            logger.error("deleting %s/%s at the end of its TTL failed: %r", key.namespace, key.name, err)
            self.retry(key, now)
            return
        self._expired(key, e)
        measuring.RUNS_DELETED.inc()
        logger.info(
            "deleted %s/%s (uid %s): finished, its ttlSecondsAfterFinished ran out at %s",
            key.namespace,
            key.name,
            e.uid,
            api.fmt_time(e.at),
        )

    def _expired(self, key: ExpiryKey, e: Expiry) -> None:
        """The plan ``e`` is done with (unless a newer one replaced it meanwhile)."""
        self.failures.pop(key, None)
        if self.expiring.get(key.run) == e:
            del self.expiring[key.run]
            self.scheduler.schedule(key, None)

    def fire(self, key: Hashable) -> None:
        """The scheduler's wake-up: a run's deadline or wake-up, a worker's Lease expiring, or a finished
        run's TTL running out."""
        if isinstance(key, ExpiryKey):
            e = self.expiring.get(key.run)
            if e is not None:
                if e.at > api.now():
                    self.scheduler.schedule(key, e.at)
                else:
                    self.backlog.offer(key, Urgency.EXPIRE)
        elif isinstance(key, LeaseKey):  # queued runs may lose their worker, held runs their holder
            live = self.workers.get(key)
            if live is not None and live.expires <= api.now():
                del self.workers[key]  # gone for good unless it renews (a new event re-adds it)
            self.recheck(key.namespace, held_by=key.holder)
        elif isinstance(key, RunKey):
            s = self.executions.get(key)
            if s is not None:
                self.consider(s)

    def recheck(self, namespace: str, held_by: str | None = None) -> None:
        """Re-decides the queued runs of a namespace (and the runs ``held_by`` holds)."""
        for s in list(self.executions.values()):
            if s.namespace == namespace and (
                s.phase == api.Phase.QUEUED or (held_by is not None and s.worker == held_by)
            ):
                self.consider(s)


def _leases_path(scope: Scope) -> str:
    return f"{LEASES_PATH}/namespaces/{scope.namespace}/leases" if scope.namespace else f"{LEASES_PATH}/leases"
