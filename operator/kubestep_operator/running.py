"""Starts the operator: kopf runs the process, the ``Controller`` does the work. One replica."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence


def run(
    namespaces: Sequence[str] = (),
    *,
    all_namespaces: bool = False,
    liveness_endpoint: str | None = None,
    verbose: bool = False,
    metrics_port: int | None = None,
) -> None:
    import kopf

    from kubestep._metrics import serve as serve_metrics

    from . import handlers
    from .watching import scopes

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not all_namespaces and not namespaces:
        raise SystemExit("kubestep operator: give --namespace NS (repeatable) or --all-namespaces")
    handlers.scopes[:] = scopes(list(namespaces), all_namespaces)
    serve_metrics(metrics_port)
    # No resource handlers are registered with kopf, so it watches nothing itself: no namespace or
    # CRD discovery, no peering. ``standalone``: a single replica (docs/install.md).
    asyncio.run(kopf.operator(standalone=True, clusterwide=True, liveness_endpoint=liveness_endpoint))
