"""The kopf registrations: start-up, clean-up and the liveness probe.

kopf runs the operator process (signals, the liveness endpoint, start-up and
clean-up activities); the work itself is the ``Controller``'s, fed by its own
informers rather than kopf's per-object handlers (``watching.py`` says why).
With ``--leader-elect`` the Controller starts only once this replica holds the
leader Lease (``electing.py``); a standby passes its probe and does nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import signal
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
SILENCE_LIMIT = 900.0  # seconds without a list, event or bookmark before the probe fails (watches end every 300 s)

_controller: Controller | None = None
_elector: Elector | None = None
_election: asyncio.Task[None] | None = None


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    global _controller, _elector, _election
    settings.posting.level = logging.WARNING  # our own Events tell the story; kopf posts only trouble
    settings.scanning.disabled = True  # kopf watches no resource, so it needs no CRD discovery (nor its RBAC)
    ours: OperatorSettings = memo.settings
    served = scopes(list(ours.namespaces), ours.all_namespaces)
    _controller = Controller(
        kube=Kube(connections=ours.writers + EVENT_SENDERS),
        watch=Kube(connections=2 * len(served)),
        scopes=served,
        lease_grace=api.now() + dt.timedelta(seconds=ours.lease_seconds),
        lease_seconds=ours.lease_seconds,
        grace_seconds=ours.grace_seconds,
        cancel_audit=ours.cancel_audit,
        list_bytes=ours.list_bytes,
        writers=ours.writers,
        event_senders=EVENT_SENDERS,
    )
    if not ours.leader_election:
        _lead()
        return
    assert ours.leader_namespace  # checked before kopf starts (running.py)
    timing = Timing(ours.leader_lease_seconds, ours.leader_renew_deadline, ours.leader_retry_period)
    _elector = Elector(Kube(connections=1), ours.leader_namespace, ours.leader_lease_name, ours.identity, timing)
    _election = asyncio.create_task(_elector.run(_lead_async, _step_down))


def _lead() -> None:
    assert _controller is not None
    _controller.lease_grace = api.now() + dt.timedelta(seconds=_controller.lease_seconds)
    _controller.start()
    measuring.LEADER.set(1)


async def _lead_async() -> None:
    _lead()


def _step_down() -> None:
    """Lost the Lease: stop acting at once, then exit (the pod restarts as a standby)."""
    measuring.LEADER.set(0)
    if _controller is not None:
        asyncio.get_running_loop().create_task(_controller.stop())
    os.kill(os.getpid(), signal.SIGTERM)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if _election is not None:
        _election.cancel()
    if _controller is not None:
        await _controller.stop()
    if _elector is not None:
        await _elector.release()  # after the last write: a standby takes over within one retry period
        await _elector.kube.aclose()


@kopf.on.probe(id="informers")
def informers(**_: Any) -> dict[str, Any]:
    """Fails the liveness probe when the operator has heard nothing from the apiserver for too long."""
    if _controller is None:
        return {"started": False}
    if _elector is not None and not _elector.leading:
        return {"leader": False, "identity": _elector.identity}
    health = _controller.health()
    if health["dead"]:
        raise kopf.PermanentError(f"operator loops ended: {'; '.join(health['dead'])}")
    if health["silent_seconds"] > SILENCE_LIMIT:
        raise kopf.PermanentError(f"no list, event or bookmark for {health['silent_seconds']} s")
    return health
