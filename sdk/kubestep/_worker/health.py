"""The worker's probes for the kubelet: ``/readyz`` and ``/healthz`` on ``--health-port``.

Served by aiohttp (already the API client's transport) on the worker's own event loop, so an
answer proves the loop is turning: a server in a thread would answer while the loop is blocked.

- ``/healthz`` (liveness): the loop answered. Nothing about the API server: a worker rides out an
  apiserver outage on purpose (``letting_go.Outage``), and a liveness probe that failed then would
  restart every worker of the cluster at once and re-run the steps they had in flight.
- ``/readyz`` (readiness): the worker holds its Lease and has listed what it watches, so it claims
  runs; not after SIGTERM, while it finishes its steps and hands its runs back. A rollout then waits
  until new workers really serve.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web


class Serving(Protocol):
    """What the probes ask of a worker."""

    @property
    def serving(self) -> bool: ...

    @property
    def why_not_serving(self) -> str: ...


async def start(worker: Serving, port: int, host: str = "0.0.0.0") -> web.AppRunner:
    """Serve the probes until the returned runner's ``cleanup()``."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if worker.serving:
            return web.Response(text="ok\n")
        return web.Response(status=503, text=f"not serving: {worker.why_not_serving}\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
