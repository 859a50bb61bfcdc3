"""``kubestep worker MODULE``: import the module, serve its workflows until SIGTERM."""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import logging
import os
import sys

from .._kube import Kube
from .._metrics import serve as serve_metrics
from .._procs import fewer_collections, freeze_heap
from .._settings import WorkerSettings
from .._workflow import registered
from . import health
from .leasing import IdentityInUse, WorkflowCollision
from .preflight import OutdatedCRDs
from .worker import EXIT_RESTART, Worker


def run(settings: WorkerSettings) -> None:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, os.getcwd())
    importlib.import_module(settings.module)
    workflows = registered()
    if not workflows:
        raise SystemExit(f"kubestep worker: module {settings.module!r} declares no @workflow")
    serve_metrics(settings.metrics_port)

    async def main() -> None:
        # Synchronous steps run in threads: one per run it may hold, and a few to spare (asyncio's
        # default is min(32, CPUs + 4), fewer than the runs a 2-CPU worker holds).
        asyncio.get_running_loop().set_default_executor(
            concurrent.futures.ThreadPoolExecutor(
                max_workers=settings.concurrency + 4, thread_name_prefix="kubestep-step"
            )
        )
        kube = Kube(connections=settings.http_connections)
        control = Kube()
        namespace = settings.namespace or kube.default_namespace or "default"
        worker = Worker(kube, workflows, namespace, settings, control=control)
        worker.install_signal_handlers()
        probes = await health.start(worker, settings.health_port) if settings.health_port else None
        try:
            await worker.run()
        except (IdentityInUse, WorkflowCollision, OutdatedCRDs) as e:
            raise SystemExit(f"kubestep worker: {e}") from None
        finally:
            if probes is not None:
                await probes.cleanup()
            await kube.aclose()
            await control.aclose()
        if worker.restart_reason is not None:
            # Said on stderr, not only in the log: a worker started by hand has no kubelet to
            # restart it, and was otherwise simply gone. Its runs are back in the queue (the
            # Events saying why were sent before the connections closed: ``Worker.run``).
            print(
                f"kubestep worker: exiting with {EXIT_RESTART} to be restarted ({worker.restart_reason}); "
                "in a pod the kubelet restarts it, started by hand, start it again",
                file=sys.stderr,
                flush=True,
            )
            # An abandoned step's thread would keep the interpreter alive at exit (thread pools
            # join their threads): leave at once, after the logs are out.
            logging.shutdown()
            os._exit(EXIT_RESTART)

    freeze_heap()  # everything imported stays; full collections need not walk it (``_procs.py``)
    fewer_collections()  # a young collection per ~7,000 new containers, not per 700 (``_procs.py``)
    asyncio.run(main())
