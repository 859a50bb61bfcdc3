"""The kopf registrations: start-up, clean-up and the liveness probe.

kopf runs the operator process (signals, the liveness endpoint, start-up and
clean-up activities); the work itself is the ``Controller``'s, fed by its own
informers rather than kopf's per-object handlers (``watching.py`` says why).
With ``--leader-elect`` the Controller starts only once this replica holds the
leader Lease (``electing.py``); a standby passes its probe and does nothing. A
leader that loses the Lease stops acting at once and sets the stop flag kopf
was started with: kopf runs the clean-up and returns, and the process exits so
that its pod restarts as a standby.

What the handlers share is kept in kopf's ``memo`` (made by ``running.run``),
not in module globals: ``settings`` and ``stop`` (the stop flag) from the
start, and from start-up on ``controller``, with election also ``elector`` and
``election`` (the task that runs it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from typing import Any

import kopf

from kubestep import _protocol as api
from kubestep._kube import Kube
from kubestep._settings import OperatorSettings

from . import measuring
from .controller import Controller
from .electing import Elector, Timing
from .watching import scopes

logger = logging.getLogger("kubestep.operator")

EVENT_SENDERS = 2
COLLECTORS = 1  # the StepBatch collector's one request at a time (``collecting.py``)
SILENCE_LIMIT = 900.0  # seconds without a list, event or bookmark before the probe fails (watches end every 300 s)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # our own Events tell the story; kopf posts only trouble
    settings.scanning.disabled = True  # kopf watches no resource, so it needs no CRD discovery (nor its RBAC)
    ours: OperatorSettings = memo.settings
    served = scopes(list(ours.namespaces), ours.all_namespaces)
    controller = memo.controller = Controller(
        kube=Kube(connections=ours.writers + EVENT_SENDERS + COLLECTORS),
        watch=Kube(connections=2 * len(served)),
        scopes=served,
        lease_grace=api.now() + dt.timedelta(seconds=ours.lease_seconds),
        lease_seconds=ours.lease_seconds,
        grace_seconds=ours.grace_seconds,
        cancel_audit=ours.cancel_audit,
        list_bytes=ours.list_bytes,
        writers=ours.writers,
        event_senders=EVENT_SENDERS,
        collect_seconds=ours.collect_seconds,
        run_ttl_seconds=ours.run_ttl_seconds,
    )
    if not ours.leader_election:
        lead(controller)
        return
    assert ours.leader_namespace  # checked before kopf starts (running.py)
    timing = Timing(ours.leader_lease_seconds, ours.leader_renew_deadline, ours.leader_retry_period)
    elector = memo.elector = Elector(
        Kube(connections=1), ours.leader_namespace, ours.leader_lease_name, ours.identity, timing
    )
    memo.election = asyncio.create_task(
        elector.run(functools.partial(_lead_async, controller), functools.partial(step_down, memo))
    )


def lead(controller: Controller) -> None:
    controller.lease_grace = api.now() + dt.timedelta(seconds=controller.lease_seconds)
    controller.start()
    measuring.LEADER.set(1)


async def _lead_async(controller: Controller) -> None:
    lead(controller)


def step_down(memo: kopf.Memo) -> None:
    """Lost the Lease: stop acting at once, then exit (the pod restarts as a standby). Setting the
    stop flag ends kopf as SIGTERM would: the clean-up runs (the Lease is not released, it is not
    ours), and ``kopf.operator`` returns."""
    measuring.LEADER.set(0)
    controller: Controller | None = memo.get("controller")
    if controller is not None:
        memo.stopping = asyncio.get_running_loop().create_task(controller.stop())
    memo.stop.set()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    election: asyncio.Task[None] | None = memo.get("election")
    controller: Controller | None = memo.get("controller")
    elector: Elector | None = memo.get("elector")
    stop: asyncio.Event | None = memo.get("stop")
    if stop is not None:
        # Stopping on a signal, kopf still waits on the stop flag in a task of its own, and at the
        # end it gives every task left 5 s to finish before it cancels them: set it, or each SIGTERM
        # costs those 5 s (tests/test_backlog.py found it).
        stop.set()
    if election is not None:
        election.cancel()
    if controller is not None:
        await controller.stop()
    if elector is not None:
        await elector.release()  # after the last write: a standby takes over within one retry period
        await elector.kube.aclose()


@kopf.on.probe(id="informers")
def informers(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    """Fails the liveness probe when the operator has heard nothing from the apiserver for too long."""
    controller: Controller | None = memo.get("controller")
    elector: Elector | None = memo.get("elector")
    if controller is None:
        return {"started": False}
    if elector is not None and not elector.leading:
        return {"leader": False, "identity": elector.identity}
    health = controller.health()
    if health["dead"]:
        raise kopf.PermanentError(f"operator loops ended: {'; '.join(health['dead'])}")
    if health["silent_seconds"] > SILENCE_LIMIT:
        raise kopf.PermanentError(f"no list, event or bookmark for {health['silent_seconds']} s")
    return health
