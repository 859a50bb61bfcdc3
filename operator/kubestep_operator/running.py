"""Starts the operator: kopf with Kubestep's handlers, one active replica by default.

With ``peering`` set, several replicas may run: kopf's peering lets the one
with the highest priority act while the others stand by (give each replica
a distinct priority); without it the operator runs standalone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Sequence


def run(
    namespaces: Sequence[str] = (),
    *,
    all_namespaces: bool = False,
    liveness_endpoint: str | None = None,
    peering_name: str | None = None,
    priority: int = 0,
    verbose: bool = False,
    metrics_port: int | None = None,
) -> None:
    import kopf
    from kopf._core.engines.peering import Identity  # not re-exported by kopf

    from kubestep._metrics import serve as serve_metrics

    from . import handlers  # noqa: F401  (registers the handlers)

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    if not verbose:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # "handler succeeded" per event
    if not all_namespaces and not namespaces:
        raise SystemExit("kubestep operator: give --namespace NS (repeatable) or --all-namespaces")
    serve_metrics(metrics_port)
    asyncio.run(
        kopf.operator(
            standalone=peering_name is None,
            peering_name=peering_name,
            priority=priority,
            clusterwide=all_namespaces,
            namespaces=list(namespaces),
            liveness_endpoint=liveness_endpoint,
            # kopf derives its peering identity from the user name, which a
            # container's arbitrary UID may not have: name it ourselves.
            identity=Identity(os.environ.get("POD_NAME") or socket.gethostname()),
        )
    )
