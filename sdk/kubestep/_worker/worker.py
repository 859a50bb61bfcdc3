"""The worker process: watches over executions, claims, and a clean shutdown.

A worker serves the workflows registered in the module it imported, in one
namespace, identified by ``POD_NAME``. It watches the runs it holds and the
queued ones (two filtered watches); the held watch is the operator's push
channel: the operator signals a cancellation or time-out by writing
``status.cancellation``, and the worker learns it from the next event, within
milliseconds. After a reconnect the re-list delivers the same state, so a
signal is never lost.

On SIGTERM the worker stops claiming, lets every run finish its step in
flight, hands each run back (phase ``Queued``) at that boundary and deletes
its Lease; another worker resumes the runs by replay.

A step that did not stop when interrupted (a synchronous step's thread, which
Python cannot kill, or async code that swallows cancellation) is abandoned
where it runs. The worker then restarts itself the same way, and exits with
``EXIT_RESTART`` so that the runaway code dies with the process (in a pod, the
kubelet starts the container again).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import signal
import time
from typing import Any

from .. import _protocol as api
from .._errors import ApiError, NotFoundError, TransportError
from .._informer import Change, Informer
from .._kube import Kube, settle
from .._metrics import LOOP_LAG_SECONDS, RUNS_ACTIVE, RUNS_ENDED, WATCH_EVENTS
from .._settings import WorkerSettings
from .._stores import KubeStore, StepStore
from .._workflow import Workflow
from . import preflight
from .committing import GroupCommit
from .leasing import WorkerLease
from .letting_go import let_go
from .running import Run, _newer
from .unwinding import Release

logger = logging.getLogger("kubestep.worker")

EVENTS_AT_EXIT = 5.0  # seconds a stopping worker waits for its last Events to be sent
BLIND_READ_SECONDS = 0.5  # how often held runs are read while their watch is down
EXIT_RESTART = 75  # EX_TEMPFAIL: "restart me"; the worker shed a step that would not stop
SWEEP_SECONDS = 600.0  # how often the Postgres store's finished runs past their retention are deleted
# Status checkpoints (step journal): the timer looks every CHECKPOINT_TICK for runs due, and at most
# CHECKPOINTS_AT_ONCE are written at a time. Each is a ConfigMap create and a status patch of ~20 KB
# at 1,000+ steps/s; a whole tick's worth at once (a second's, as it was) left the apiserver a burst of
# them to chew through every second, and a cancel arriving meanwhile waited behind it.
CHECKPOINT_TICK = 0.1
CHECKPOINTS_AT_ONCE = 4
LAG_TICK = 0.1  # how often the event loop's lateness is sampled (``_measure_loop_lag``)


class Worker:
    def __init__(
        self,
        kube: Kube,
        workflows: dict[str, Workflow],
        namespace: str,
        settings: WorkerSettings,
        control: Kube | None = None,
    ) -> None:
        if not workflows:
            raise ValueError("a worker needs at least one @workflow to serve")
        self.kube = kube
        # The watch and the Lease renewals get connections of their own (``control``),
        # so they never wait in the pool behind the runs' status writes: a renewal that
        # waited too long would get the worker's runs re-queued as lost.
        self.control = control or kube
        self.workflows = workflows
        self.namespace = namespace
        self.name = name = settings.name
        self.concurrency = settings.concurrency
        self.settings = settings
        self.lease = WorkerLease(
            self.control,
            namespace,
            name,
            sorted(workflows),
            settings.lease_seconds,
            settings.pod_uid,
            sources={wid: f"{wf.fn.__module__}.{wf.fn.__qualname__}" for wid, wf in workflows.items()},
            queue=settings.queue,
        )
        self.runs: dict[str, Run] = {}
        self._held_informer: Informer | None = None
        self._held_selector = ""
        # The step journal: one group commit for every run this worker holds (committing.py), into
        # StepBatches or Postgres rows (_stores.py).
        self.store = step_store(settings, kube, namespace)
        self.journal = (
            GroupCommit(kube, namespace, name, outage_seconds=max(3.0 * settings.lease_seconds, 30.0), store=self.store)
            if settings.step_store != "status"
            else None
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._queued: dict[str, dict[str, Any]] = {}  # runs seen Queued while we were full
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.restart_reason: str | None = None  # set when the worker must restart to shed runaway code

    # ----- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        if self.journal is not None:
            await preflight.check(self.control)  # the step journal needs the CRDs of this release
        await self._start_store()
        await self.lease.acquire()
        renewer = asyncio.create_task(self.lease.renew_forever())
        watcher = asyncio.create_task(self._watch_forever())
        checkpoints = asyncio.create_task(self._checkpoint_forever())
        retention = asyncio.create_task(self._sweep_forever())
        lag = asyncio.create_task(_measure_loop_lag())
        logger.info(
            "worker %s serving %s in namespace %s (step store: %s)",
            self.name,
            sorted(self.workflows),
            self.namespace,
            self.settings.step_store,
        )
        try:
            await self._stopping.wait()
        finally:
            watcher.cancel()
            for run in self.runs.values():
                run.handback = True
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            checkpoints.cancel()
            retention.cancel()
            lag.cancel()
            if self.journal is not None:
                await self.journal.close()
            await self.store.close()
            await settle(EVENTS_AT_EXIT)  # the Events of the runs' endings, before the connections close
            renewer.cancel()
            await self.lease.release()
            logger.info("worker %s stopped", self.name)

    async def _start_store(self) -> None:
        """The store ready (the Postgres store's tables) before the Lease says this worker serves:
        a database that does not answer yet is waited for, as a pod's would be at start-up."""
        delay = 0.5
        while True:
            try:
                await self.store.start()
                return
            except TransportError as e:
                logger.warning("worker %s: the %s step store is not reachable yet (%s)", self.name, self.store.kind, e)
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)

    def stop(self) -> None:
        """Stop claiming; hand runs back at their next step boundary; then exit."""
        self._stopping.set()

    @property
    def serving(self) -> bool:
        """Claiming runs: the Lease is held and the watches have listed, and no SIGTERM yet (``/readyz``)."""
        return self.ready.is_set() and not self._stopping.is_set()

    @property
    def why_not_serving(self) -> str:
        if self._stopping.is_set():
            return "stopping: finishing the steps in flight, handing runs back"
        return "starting: acquiring the Lease and listing runs"

    def on_abandoned(self, why: str) -> None:
        """A step would not stop: drain like on SIGTERM, then exit with EXIT_RESTART."""
        if self.restart_reason is None:
            self.restart_reason = why
            logger.error("worker %s restarts: %s", self.name, why)
        self.stop()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)

    async def _checkpoint_forever(self) -> None:
        """With the step journal, each running run's status catches up every ``status_seconds``
        (``Run.checkpoint``): what ``kubectl get wfx`` shows, and what lets the batches go."""
        if self.journal is None:
            return
        tick = min(CHECKPOINT_TICK, self.settings.status_seconds / 2)
        gate = asyncio.Semaphore(CHECKPOINTS_AT_ONCE)

        async def checkpoint(run: Run) -> None:
            async with gate:
                await run.checkpoint()

        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for run in list(self.runs.values()):
                if run.checkpoint_due(now):
                    run.checkpoint_queued()
                    self._spawn(checkpoint(run))

    async def _sweep_forever(self) -> None:
        """With ``KUBESTEP_POSTGRES_RETENTION_DAYS``, every ``SWEEP_SECONDS`` the finished runs the
        store keeps past it go (``StepStore.sweep``: one worker of the namespace at a time). A store
        that does not answer is tried again at the next sweep."""
        days = self.settings.postgres_retention_days
        if days is None or self.settings.step_store != "postgres":
            return
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            before = api.now() - dt.timedelta(days=days)
            try:
                gone = await self.store.sweep(self.namespace, before)
            except TransportError as e:
                logger.warning("worker %s: the retention sweep could not reach the step store: %s", self.name, e)
                continue
            if gone:
                logger.info(
                    "worker %s: %d finished runs older than %g days deleted from the step store", self.name, gone, days
                )

    # ----- watching ---------------------------------------------------------------------------

    async def _watch_forever(self) -> None:
        """Two filtered watches rather than one on every run of the namespace: the runs this worker
        holds, and the queued ones it might claim. A step write then reaches its holder (and the
        operator) only, not every worker of the namespace (the CRD's selectableFields). Against a
        CRD without them (an older install) the apiserver refuses the selector: one unfiltered watch."""
        terminal = ",".join(f"status.phase!={p}" for p in sorted(api.TERMINAL_PHASES))
        streams = {"held": f"status.worker={self.name},{terminal}", "queued": f"status.phase={api.Phase.QUEUED}"}
        try:
            await self.control.get(api.execution_path(self.namespace), {"fieldSelector": streams["held"], "limit": "1"})
        except ApiError as e:
            if e.status_code != 400:
                raise
            logger.warning(
                "the WorkflowExecution CRD has no selectableFields (apply crds/ again); "
                "watching every run of the namespace: %s",
                e.message,
            )
            streams = {"all": ""}
        path = api.execution_path(self.namespace)
        self._held_selector = streams.get("held", "")
        informers = [
            Informer(
                self.control,
                path,
                functools.partial(self._on_change, stream),
                params={"fieldSelector": selector} if selector else {},
                name=f"worker {stream}",
            )
            for stream, selector in streams.items()
        ]
        self._held_informer = informers[0]  # "held", or the one unfiltered stream
        tasks = [asyncio.create_task(informer.run()) for informer in informers]
        tasks.append(asyncio.create_task(self._read_while_blind()))
        try:
            await asyncio.gather(*(i.listed.wait() for i in informers))
            self.ready.set()
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def _read_while_blind(self) -> None:
        """While the watch of the held runs is down (the apiserver restarting, say), read them every
        ``BLIND_READ_SECONDS``. The step journal writes no status per step, so a held run would
        otherwise learn of a cancel only when the watch is back, and go on starting steps meanwhile
        (the chaos soak found three steps started after a cancel while the watch backed off)."""
        while True:
            await asyncio.sleep(BLIND_READ_SECONDS)
            informer = self._held_informer
            if informer is None or not informer.blind or not self.runs:
                continue
            params = {"fieldSelector": self._held_selector} if self._held_selector else {}
            try:
                listing = await self.control.get(api.execution_path(self.namespace), params)
            except (ApiError, TransportError) as e:
                logger.debug("reading held runs while the watch is down: %r", e)
                continue
            seen = set()
            for obj in listing.get("items") or []:
                seen.add(obj["metadata"]["name"])
                run = self.runs.get(obj["metadata"]["name"])
                if run is not None:
                    obj.setdefault("apiVersion", api.API_VERSION)
                    obj.setdefault("kind", api.KIND)
                    run.observe(obj)
            for name, run in list(self.runs.items()):
                if run.claimed and name not in seen:
                    self._spawn(self._reread(run))  # deleted, lost or ended: a read tells which

    def _on_change(self, stream: str, change: Change) -> None:
        obj = change.obj
        obj.setdefault("apiVersion", api.API_VERSION)
        obj.setdefault("kind", api.KIND)
        self._on_event(change.kind, obj, stream, listed=change.listed)

    def _on_event(self, kind: str, obj: dict[str, Any], stream: str = "all", listed: bool = False) -> None:
        name = obj["metadata"]["name"]
        WATCH_EVENTS.labels(stream).inc()
        logger.debug(
            "%s event %s %s phase=%s rv=%s",
            stream,
            kind,
            name,
            (obj.get("status") or {}).get("phase"),
            obj["metadata"].get("resourceVersion"),
        )
        run = self.runs.get(name)
        if kind == "DELETED":
            # On a filtered stream DELETED may only mean "left the selection" (and carries the
            # state before the change): a queued run that was claimed (by us too) is no longer
            # queued; a run that left our held selection was deleted, lost to us or ended, which
            # only a read tells apart, unless the run already knows a state as new.
            self._queued.pop(name, None)
            if run is None or stream == "queued":
                return
            if stream == "all":
                run.observe_deleted()
            elif _newer(str(obj["metadata"]["resourceVersion"]), run.rv):
                self._spawn(self._reread(run))
            return
        if run is not None:
            run.observe(obj)
            return
        status = obj.get("status") or {}
        phase = status.get("phase")
        if phase in api.HELD_PHASES and status.get("worker") == self.name:
            # A list is a consistent read: a run it shows held by us that we are not
            # running was held by a previous life of this worker (same pod name), so
            # hand it back. A watch event saying so is only a late echo of a run we
            # have just finished.
            if listed:
                self._spawn(self._recover(obj))
            return
        if phase != api.Phase.QUEUED or (obj.get("spec") or {}).get("cancelRequested"):
            self._queued.pop(name, None)
            return
        if obj["spec"].get("workflow") not in self.workflows or api.run_queue(obj) != self.settings.queue:
            return  # not ours to run: another workflow, or a run routed to another queue (spec.queue)
        if self._stopping.is_set() or len(self.runs) >= self.concurrency:
            self._queued[name] = obj
            return
        self._start(obj)

    def _start(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        self._queued.pop(name, None)
        run = Run(
            self.kube,
            self.workflows[obj["spec"]["workflow"]],
            obj,
            self.name,
            self.settings,
            control=self.control,
            journal=self.journal,
        )
        run.on_abandoned = self.on_abandoned
        self.runs[name] = run
        self._spawn(self._drive(run))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drive(self, run: Run) -> None:
        outcome, active = "error", False
        try:
            if not await run.claim():
                return
            active = True
            RUNS_ACTIVE.labels(run.workflow.id).inc()
            outcome = await run.execute()
            logger.info("run %s: %s", run.name, outcome)
        except Release as r:
            outcome = r.why
            logger.info("run %s released: %s", run.name, r.why)
            if r.held:
                await run.give_up(r)
        except Exception as exc:
            logger.exception("run %s: worker error", run.name)
            if run.claimed and not run.lost:
                await run.give_up(exc)
        finally:
            if active:
                RUNS_ACTIVE.labels(run.workflow.id).dec()
            if run.claimed:
                RUNS_ENDED.labels(run.workflow.id, outcome if outcome in _OUTCOMES else "error").inc()
            self.runs.pop(run.name, None)
            self._fill()

    def _fill(self) -> None:
        while self._queued and len(self.runs) < self.concurrency and not self._stopping.is_set():
            _, obj = self._queued.popitem()
            self._start(obj)

    async def _reread(self, run: Run) -> None:
        try:
            run.observe(await self.control.get(api.execution_path(self.namespace, run.name)))
        except NotFoundError:
            run.observe_deleted()
        except (ApiError, TransportError) as e:
            logger.info("could not re-read %s: %r", run.name, e)

    async def _recover(self, obj: dict[str, Any]) -> None:
        # Held by a previous life of this worker: finish it as Cancelled if it
        # was told to stop, else re-queue it for replay.
        patch = let_go(obj, self.name, f"worker {self.name} restarted", audited=self.settings.cancel_audit)
        try:
            await self.control.update_status(obj, patch)
        except (ApiError, TransportError) as e:
            logger.info("could not re-queue %s: %s", obj["metadata"]["name"], e)


def step_store(settings: WorkerSettings, kube: Kube, namespace: str) -> StepStore:
    """The store ``KUBESTEP_STEP_STORE`` names (``status`` still archives into ConfigMaps)."""
    if settings.step_store == "postgres":
        assert settings.postgres_dsn is not None  # WorkerSettings.load refuses postgres without one
        from .._postgres import PostgresStore  # asyncpg is imported only by those who chose it

        return PostgresStore(settings.postgres_dsn, kube, namespace, settings.name)
    return KubeStore(kube, namespace, settings.name)


_OUTCOMES = frozenset(
    {api.Phase.COMPLETED, api.Phase.FAILED, api.Phase.CANCELLED, api.Phase.WAITING, "handback", "lost", "deleted"}
)


async def _measure_loop_lag() -> None:
    """``kubestep_worker_loop_lag_seconds``: everything the worker learns (a cancel on the watch, a
    write's answer) waits for the one event loop that also runs every held run's steps and records.
    A timer's lateness is that wait, sampled: the worker's share of a cancel's latency."""
    while True:
        t = time.monotonic()
        await asyncio.sleep(LAG_TICK)
        LOOP_LAG_SECONDS.observe(max(0.0, time.monotonic() - t - LAG_TICK))
