"""The aiohttp ``Application`` of ``kubestep server``: its routes, and the rules every request meets.

In order, for every request:

1. **Errors** (outermost middleware): whatever a handler raises becomes a JSON answer
   ``{"error", "reason"}`` (``errors``), aiohttp's own 404, 405 and 413 included; anything
   unexpected is a 500 whose detail goes to the log, not to the caller.
2. **Auth**, for ``/api/``: the ``Authorization: Bearer`` token (``auth.bearer_token``), else the
   UI's ``kubestep_token`` cookie (``ui``; ``POST /api/v1/session`` sets it and needs neither), or 401
   at once, without a word to the apiserver. The token is the caller's identity for every
   apiserver request the handler makes (``context.client_for``). ``/healthz`` and ``/readyz``
   need none and say nothing.
3. **CSRF**, for every request but GET, HEAD and OPTIONS (the API's are POSTs):
   ``Content-Type: application/json`` or 415; and, when the token came from the cookie,
   ``X-Kubestep-CSRF: 1`` or 403 (the cookie is SameSite=Strict as well).
   A cross-site HTML form can send only three content types, and a script on another origin
   cannot send this one without a CORS preflight, which this server never grants (it sends no
   CORS header at all).
4. **Size**: a body over ``max_body_bytes`` is refused (413) as it is read (aiohttp's
   ``client_max_size``).

And on every response, errors and streams included: ``X-Content-Type-Options: nosniff``,
``X-Frame-Options: DENY``, ``Content-Security-Policy: default-src 'none'; frame-ancestors 'none'``
(an API answer is never a page to render; the UI's pages and files: ``default-src 'self'``), ``Cache-Control: no-store`` (answers depend on who
asks), ``Referrer-Policy: no-referrer``, and a ``Server`` header that names no versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web, web_log

from kubestep import PostgresHistory
from kubestep._kube import Kube

from . import bulk, routes, streams, ui
from .auth import Access, TokenClients, sweep_every
from .cache import RunCache
from .context import (
    ACCESS,
    CACHE,
    CLOSING,
    COOKIE,
    POSTGRES,
    SETTINGS,
    STREAMS,
    TOKENS,
    StreamSlots,
    caller_token,
)
from .errors import Problem, problem_for
from .settings import ServerSettings

logger = logging.getLogger("kubestep.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Server": "kubestep",
}

#: Methods that change nothing: no CSRF rule for them.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def make_app(settings: ServerSettings, base: Kube) -> web.Application:
    """The application. ``base``: the server's own apiserver client, from its kubeconfig or its
    pod's configuration. Its URL and TLS trust serve every caller's client (``Kube.for_token``);
    its credentials serve only the shared cache's list and watch (``--cache``), never a caller's
    request."""
    app = web.Application(middlewares=[_errors, _auth], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[TOKENS] = TokenClients(
        # A stream holds a connection for as long as it is open: a caller may have as many as the server.
        lambda token: base.for_token(token, connections=settings.max_streams + 16),
        size=settings.token_clients,
        idle_seconds=settings.token_idle_seconds,
    )
    app[STREAMS] = StreamSlots(settings.max_streams)
    app[ACCESS] = Access(app[TOKENS], ttl=settings.access_ttl_seconds)
    if settings.cache_namespaces is not None:
        app[CACHE] = RunCache(base, settings.cache_namespaces, queue_size=settings.stream_queue)
        app.cleanup_ctx.append(_cache)
    app[CLOSING] = asyncio.Event()
    if settings.postgres_dsn:
        try:
            app[POSTGRES] = PostgresHistory(settings.postgres_dsn, base)
        except ImportError as e:
            raise SystemExit(f"kubestep server: {e}") from None
        app.cleanup_ctx.append(_postgres)

    # The namespace's stream is the list's ``?watch=true`` (as kubectl's ``get -w``), so that no
    # path below ``/executions/`` is taken from the runs' names: a run named "stream" or "cancel"
    # has every route (the bulk cancel is a POST on ``/executions/cancel``, one segment short of a
    # run's ``/executions/{id}/cancel``).
    app.router.add_get("/api/v1/executions", routes.list_executions)
    app.router.add_post("/api/v1/executions/cancel", bulk.bulk_cancel)
    app.router.add_get("/api/v1/executions/{id}", routes.get_execution)
    app.router.add_post("/api/v1/executions/{id}/cancel", routes.cancel)
    app.router.add_get("/api/v1/executions/{id}/steps", routes.steps)
    app.router.add_get("/api/v1/executions/{id}/events", routes.events)
    app.router.add_post("/api/v1/executions/{id}/events", routes.send_event)
    app.router.add_get("/api/v1/executions/{id}/stream", streams.stream_execution, allow_head=False)
    app.router.add_post("/api/v1/workflows/{workflow}/run", routes.run_workflow)
    app.router.add_post("/api/v1/session", ui.sign_in)
    app.router.add_delete("/api/v1/session", ui.sign_out)
    app.router.add_get("/api/v1/can-i", ui.can_i)
    app.router.add_get("/", ui.runs_page)
    app.router.add_get("/runs/{namespace}/{name}", ui.run_page)
    app.router.add_static("/static/", ui.STATIC, follow_symlinks=False, append_version=False)
    app.router.add_get("/healthz", routes.healthz)
    app.router.add_get("/readyz", routes.readyz)

    app.on_response_prepare.append(_security_headers)
    app.on_shutdown.append(_closing)
    app.cleanup_ctx.append(_token_clients)

    async def close_base(app: web.Application) -> None:
        await base.aclose()

    app.on_cleanup.append(close_base)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise  # not an error (none of ours raises one)
        # aiohttp's own refusals: no such route (404), method (405), a body too large (413).
        reason = {404: "NotFound", 405: "MethodNotAllowed", 413: "RequestEntityTooLarge"}.get(e.status, "Error")
        message = {
            404: "no such route",
            405: f"method {request.method} not allowed here",
            413: f"the request body exceeds {request.app[SETTINGS].max_body_bytes} bytes",
        }.get(e.status, e.reason)
        allow = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        return _answer(Problem(e.status, reason, message, headers=allow))
    except asyncio.CancelledError:
        raise
    except Exception as e:
        problem = problem_for(e)
        if problem is None:
            logger.exception("%s %s failed", request.method, request.path, exc_info=e)
            problem = Problem(500, "InternalError", "internal error (the server's log has the details)")
        elif problem.status == 401 and request.path.startswith("/api/"):
            with contextlib.suppress(Problem):  # the apiserver refused the token: let it hold no place
                token = caller_token(request)
                request.app[ACCESS].forget(token)
                await request.app[TOKENS].forget(token)
        return _answer(problem)


def _answer(problem: Problem) -> web.Response:
    return web.json_response(problem.body(), status=problem.status, headers=problem.headers)


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/api/"):
        return await handler(request)
    if request.path == "/api/v1/session" and request.method == "POST":
        return await handler(request)  # signing in: the token is in the body (``ui.sign_in``)
    caller_token(request)  # a 401 without one; handlers read it again
    by_cookie = "Authorization" not in request.headers and COOKIE in request.cookies
    if request.method not in SAFE_METHODS and by_cookie and request.headers.get("X-Kubestep-CSRF") != "1":
        raise Problem(
            403, "Forbidden", "a request signed in by cookie that changes something must send X-Kubestep-CSRF: 1"
        )
    if request.method not in SAFE_METHODS and request.content_type.lower() != "application/json":
        raise Problem(
            415,
            "UnsupportedMediaType",
            "a request that changes something must be sent with Content-Type: application/json",
        )
    return await handler(request)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    if not request.path.startswith("/api/") and request.path not in ("/healthz", "/readyz"):
        # The UI's pages and files: their own scripts and styles, nothing else, never framed.
        response.headers["Content-Security-Policy"] = ui.PAGE_CSP


async def _closing(app: web.Application) -> None:
    app[CLOSING].set()


async def _cache(app: web.Application) -> AsyncIterator[None]:
    async with app[CACHE].running():
        yield


class AccessLogger(web_log.AccessLogger):
    """aiohttp's access log, with the probes' lines at DEBUG: the kubelet asks every few seconds,
    and those lines would bury the requests of people."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if request.path in ("/healthz", "/readyz") and response.status < 400:
            if self.logger.isEnabledFor(logging.DEBUG):
                self.logger.debug(
                    '%s "%s %s" %d (probe)', request.remote, request.method, request.path, response.status
                )
            return
        super().log(request, response, time)


async def _postgres(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[POSTGRES].aclose()  # the pool (made when first needed)


async def _token_clients(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    sweeper = asyncio.create_task(sweep_every(app[TOKENS], max(1.0, settings.token_idle_seconds / 4)))
    yield
    sweeper.cancel()
    await asyncio.gather(sweeper, return_exceptions=True)
    await app[TOKENS].aclose()
