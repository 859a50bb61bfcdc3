"""Starts the operator: kopf runs the process, the ``Controller`` does the work; with
``--leader-elect``, only in the replica holding the leader Lease (``electing.py``)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from kubestep._settings import OperatorSettings

if TYPE_CHECKING:
    import kopf


def run(settings: OperatorSettings) -> None:
    from kubestep._errors import ConfigurationError
    from kubestep._kube import load_configuration
    from kubestep._metrics import serve as serve_metrics
    from kubestep._procs import freeze_heap

    from . import handlers  # noqa: F401  (registers start-up, clean-up and the probe)

    logging.basicConfig(
        level=logging.DEBUG if settings.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not settings.all_namespaces and not settings.namespaces:
        raise SystemExit("kubestep operator: give --namespace NS (repeatable) or --all-namespaces")
    if settings.leader_election and not settings.leader_namespace:
        raise SystemExit("kubestep operator: --leader-elect needs --leader-election-namespace (or $POD_NAMESPACE)")
    try:
        load_configuration()  # here, not in kopf's start-up, which would retry it every minute for ever
    except ConfigurationError as e:
        raise SystemExit(f"kubestep operator: {e}") from None
    serve_metrics(settings.metrics_port)
    import kopf  # noqa: F401  (imported here, so that the frozen start-up heap holds it)

    freeze_heap()  # everything imported stays; full collections need not walk it (``_procs.py``)
    asyncio.run(operate(settings))


async def operate(settings: OperatorSettings, memo: kopf.Memo | None = None) -> None:
    """Runs kopf until SIGTERM, SIGINT or the stop flag: ``memo.stop``, which a leader that lost its
    Lease sets (``handlers.step_down``); kopf then stops as on SIGTERM, clean-up included. ``memo``
    is what the handlers share; made here unless given."""
    import kopf

    if memo is None:
        memo = kopf.Memo(settings=settings, stop=asyncio.Event())
    # No resource handlers are registered with kopf, so it watches nothing itself: no namespace or
    # CRD discovery, no peering. ``standalone``: kopf's peering stays off (our own election decides).
    await kopf.operator(
        standalone=True,
        clusterwide=True,
        liveness_endpoint=settings.liveness_endpoint,
        memo=memo,
        stop_flag=memo.stop,
    )
