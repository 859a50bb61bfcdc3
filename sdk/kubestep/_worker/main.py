"""``kubestep worker MODULE``: import the module, serve its workflows until SIGTERM."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import socket
import sys

from .._kube import Kube
from .._metrics import serve as serve_metrics
from .._workflow import registered
from .worker import Worker


def run(module: str, concurrency: int, namespace: str | None, lease_seconds: int | None,
        metrics_port: int | None = None) -> None:
    logging.basicConfig(level=os.environ.get("KUBESTEP_LOG_LEVEL", "INFO").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    sys.path.insert(0, os.getcwd())
    importlib.import_module(module)
    workflows = registered()
    if not workflows:
        raise SystemExit(f"kubestep worker: module {module!r} declares no @workflow")
    serve_metrics(metrics_port)

    async def main() -> None:
        kube = Kube()
        ns = namespace or os.environ.get("POD_NAMESPACE") or kube.default_namespace or "default"
        name = os.environ.get("POD_NAME") or socket.gethostname()
        seconds = lease_seconds or int(os.environ.get("KUBESTEP_LEASE_SECONDS", "15"))
        control = Kube()
        worker = Worker(kube, workflows, ns, name, concurrency, seconds, os.environ.get("POD_UID"), control=control)
        worker.install_signal_handlers()
        try:
            await worker.run()
        finally:
            await kube.aclose()
            await control.aclose()

    asyncio.run(main())
