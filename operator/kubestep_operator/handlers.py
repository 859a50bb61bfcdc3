"""The kopf registrations: start-up, clean-up and the liveness probe.

kopf runs the operator process (signals, the liveness endpoint, start-up and
clean-up activities); the work itself is the ``Controller``'s, fed by its own
informers rather than kopf's per-object handlers (``watching.py`` says why).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import kopf

from kubestep import _api as api
from kubestep._kube import Kube
from kubestep._settings import OperatorSettings

from .controller import Controller
from .watching import scopes

logger = logging.getLogger("kubestep.operator")

EVENT_SENDERS = 2
SILENCE_LIMIT = 900.0  # seconds without a list, event or bookmark before the probe fails (watches end every 300 s)

_controller: Controller | None = None


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    global _controller
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
        writers=ours.writers,
        event_senders=EVENT_SENDERS,
    )
    _controller.start()


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if _controller is not None:
        await _controller.stop()


@kopf.on.probe(id="informers")
def informers(**_: Any) -> dict[str, Any]:
    """Fails the liveness probe when the operator has heard nothing from the apiserver for too long."""
    if _controller is None:
        return {"started": False}
    health = _controller.health()
    if health["silent_seconds"] > SILENCE_LIMIT:
        raise kopf.PermanentError(f"no list, event or bookmark for {health['silent_seconds']} s")
    return health
