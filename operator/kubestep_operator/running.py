"""Starts the operator: kopf runs the process, the ``Controller`` does the work; with
``--leader-elect``, only in the replica holding the leader Lease (``electing.py``)."""

from __future__ import annotations

import asyncio
import logging

from kubestep._settings import OperatorSettings


def run(settings: OperatorSettings) -> None:
    import kopf

    from kubestep._metrics import serve as serve_metrics

    from . import handlers  # noqa: F401  (registers start-up, clean-up and the probe)

    logging.basicConfig(
        level=logging.DEBUG if settings.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not settings.all_namespaces and not settings.namespaces:
        raise SystemExit("kubestep operator: give --namespace NS (repeatable) or --all-namespaces")
    if settings.leader_election and not settings.leader_namespace:
        raise SystemExit("kubestep operator: --leader-elect needs --leader-election-namespace (or $POD_NAMESPACE)")
    serve_metrics(settings.metrics_port)
    # No resource handlers are registered with kopf, so it watches nothing itself: no namespace or
    # CRD discovery, no peering. ``standalone``: kopf's peering stays off (our own election decides).
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=True,
            liveness_endpoint=settings.liveness_endpoint,
            memo=kopf.Memo(settings=settings),
        )
    )
