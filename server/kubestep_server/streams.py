"""Live streams over Server-Sent Events: every state of one run (``/executions/{id}/stream``), and
every change of a namespace's runs (``/executions?watch=true``; from the shared cache when it can
answer, ``cache``).

Each stream follows with ``KubestepClient.watch_execution``/``watch_executions``, so with the
informer's rules (``kubestep._informer``: a list, then a watch resumed from its resourceVersion,
backoff, re-list only on 410), made with the caller's token: a stream reads, and writes nothing to
the apiserver. Every message is the whole object, with its resourceVersion as the message ``id:``;
a client that reconnects gets the current state first, so it misses nothing, and one that sends
``Last-Event-ID`` equal to the run's current resourceVersion is not sent that state again.

What the stream cannot say as an HTTP status once it has started, it says as a last message,
``event: error`` with the usual error body; a run's stream ends with ``event: end`` when the run
has finished. Everything that can be refused is refused before the stream starts: the run must
exist, and the caller must be allowed to read it, list and watch runs of its namespace (the follow
is a filtered list and watch; a watch refused would be retried quietly for ever). Since a token
can expire and a binding can be removed while a stream is open, the stream asks again every
``recheck_seconds`` (a read with the caller's token) and ends with ``event: error`` when refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from kubestep import Execution, ExecutionChange, KubestepClient, KubestepError

from . import sse
from .auth import require
from .cache import Query, RunCache, change_message
from .context import (
    ACCESS,
    CLOSING,
    SETTINGS,
    STREAMS,
    TOKENS,
    cache_for,
    caller_token,
    execution_id,
    namespace_of,
    query_of,
)
from .errors import Problem, problem_for
from .models import change_json, execution_json, resource_version

logger = logging.getLogger("kubestep.server")

T = TypeVar("T")

#: How long a browser waits to reconnect after a stream broke off (not after ``end``: it must close).
RECONNECT_MS = 3000


async def stream_execution(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/executions/{id}/stream``."""
    name, namespace = execution_id(request), namespace_of(request)
    settings = request.app[SETTINGS]
    slots = request.app[STREAMS]
    slots.take()
    try:
        async with request.app[TOKENS].lease(caller_token(request)) as kube:
            client = KubestepClient.from_kube(kube, namespace, field_manager=settings.field_manager)
            await client.get_execution(name)  # no such run, or not the caller's to read: a plain 404/403
            await require(kube, "list", namespace)
            await require(kube, "watch", namespace)
            response = await _open(request)
            resume_from: list[str | None] = [request.headers.get("Last-Event-ID")]

            async def send(execution: Execution) -> bool:
                rv = resource_version(execution)
                already_seen, resume_from[0] = rv == resume_from[0], None  # only the first state may be
                if not already_seen:
                    await response.write(sse.message(execution_json(execution), event="execution", id=rv))
                if execution.finished:
                    end = {
                        "execution_id": execution.id,
                        "namespace": execution.namespace,
                        "status": execution.status.phase,
                        "reason": execution.status.reason,
                    }
                    await response.write(sse.message(end, event="end", id=rv))
                    return True
                return False

            await _relay(request, response, client.watch_execution(name), send, lambda: client.get_execution(name))
            return response
    finally:
        slots.give_back()


async def stream_executions(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/executions?watch=true``: ``?namespace=``, ``?labelSelector=``, ``?workflow=``,
    ``?search=``, and ``?snapshot=false`` to skip the runs as they are now (a client that has just
    read a page wants only what changes). ``phase`` does not filter a stream: a run leaving the
    phase would never be seen to leave it."""
    namespace, query = namespace_of(request), dataclasses.replace(query_of(request), phase=None)
    snapshot = request.query.get("snapshot", "true").lower() not in ("false", "0")
    cache = cache_for(request, namespace)
    if cache is not None:
        return await _stream_from_cache(request, cache, namespace, query, snapshot)
    selector = request.query.get("labelSelector") or None
    settings = request.app[SETTINGS]
    slots = request.app[STREAMS]
    slots.take()
    try:
        async with request.app[TOKENS].lease(caller_token(request)) as kube:
            client = KubestepClient.from_kube(kube, namespace, field_manager=settings.field_manager)

            async def check() -> Any:  # may list (and the selector is valid): a plain 403/400 up front
                return await client.list_executions(label_selector=selector, limit=1)

            await check()
            await require(kube, "watch", namespace)
            response = await _open(request)

            async def send(change: ExecutionChange) -> bool:
                if (change.listed and not snapshot) or not query.matches_execution(change.execution):
                    return False
                rv = resource_version(change.execution)
                await response.write(sse.message(change_json(change), event="change", id=rv))
                return False

            await _relay(request, response, client.watch_executions(label_selector=selector), send, check)
            return response
    finally:
        slots.give_back()


async def _stream_from_cache(
    request: web.Request, cache: RunCache, namespace: str, query: Query, snapshot: bool
) -> web.StreamResponse:
    """The namespace's stream fed by the shared cache: no list and no watch of its own. The caller
    must be allowed to list and watch runs in the namespace (``auth.Access``, asked again every
    ``recheck_seconds``); a stream that falls ``stream_queue`` messages behind is ended (503)."""
    access, token = request.app[ACCESS], caller_token(request)
    slots = request.app[STREAMS]
    slots.take()
    try:

        async def check() -> None:
            await access.require(token, "list", namespace)
            await access.require(token, "watch", namespace)

        await check()
        with cache.subscribe(namespace, query) as subscriber:  # before the snapshot: nothing falls between
            response = await _open(request)
            if snapshot:
                for i, entry in enumerate(cache.matching(namespace, query)):
                    await response.write(change_message("ADDED", entry, listed=True))
                    if i % 256 == 255:
                        await asyncio.sleep(0)  # thousands of runs: let the other requests in

            async def messages() -> AsyncGenerator[bytes]:
                while True:
                    message = await subscriber.queue.get()
                    if subscriber.overflowed:
                        raise Problem(503, "ServiceUnavailable", "this stream fell too far behind; reconnect")
                    yield message

            async def send(message: bytes) -> bool:
                await response.write(message)
                return False

            await _relay(request, response, messages(), send, check)
            return response
    finally:
        slots.give_back()


async def _open(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": f"{sse.CONTENT_TYPE}; charset=utf-8",
            # A buffering proxy (nginx) would hold the messages back: ask it not to.
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    await response.write(sse.retry(RECONNECT_MS))
    return response


async def _relay(
    request: web.Request,
    response: web.StreamResponse,
    items: AsyncGenerator[T],
    send: Callable[[T], Awaitable[bool]],
    recheck: Callable[[], Awaitable[Any]],
) -> None:
    """Writes ``items`` with ``send`` until it says the stream is done, the client goes away, the
    server stops, or the caller may no longer read (``recheck``); a heartbeat after each
    ``heartbeat_seconds`` without a message. Ends the stream with ``event: error`` if it must."""
    settings = request.app[SETTINGS]
    closing: asyncio.Future[Any] = asyncio.ensure_future(request.app[CLOSING].wait())
    loop = asyncio.get_running_loop()
    checked = loop.time()
    upcoming: asyncio.Future[Any] = asyncio.ensure_future(anext(items))
    try:
        while True:
            done, _ = await asyncio.wait(
                {upcoming, closing}, timeout=settings.heartbeat_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            if closing in done:
                return  # the server stops; the client reconnects (to another replica, or to this one later)
            if upcoming in done:
                if await send(upcoming.result()):
                    return
                upcoming = asyncio.ensure_future(anext(items))
            else:
                await response.write(sse.HEARTBEAT)
            if loop.time() - checked >= settings.recheck_seconds:
                checked = loop.time()
                await recheck()
    except StopAsyncIteration:
        return  # the follow ended (it does not, but if it did, so would the stream)
    except ConnectionError:
        return  # the client went away: nothing to say to anyone
    except (KubestepError, Problem) as e:
        problem = problem_for(e)
        assert problem is not None  # every KubestepError maps to an answer
        await _last_word(response, problem)
    except Exception as e:
        logger.exception("stream %s failed", request.path, exc_info=e)
        await _last_word(response, Problem(500, "InternalError", "the stream failed; reconnect"))
    finally:
        closing.cancel()
        upcoming.cancel()
        await asyncio.wait({closing, upcoming})
        if not upcoming.cancelled():
            upcoming.exception()  # retrieved: what it raised was handled above, or does not matter now
        await items.aclose()  # stops the follow: its informer, its watch


async def _last_word(response: web.StreamResponse, problem: Problem) -> None:
    with contextlib.suppress(ConnectionError):
        await response.write(sse.message(problem.body(), event="error"))
