"""One handler per route of ``/api/v1`` (the streams: ``streams``), each a few calls of
``KubestepClient`` made with the caller's token (``context.client_for``). An error the SDK raises
goes up to the error middleware (``app``), which answers it (``errors.problem_for``)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from . import streams
from .cache import TOKEN_PREFIX, BadContinue
from .context import (
    ACCESS,
    CLOSING,
    SETTINGS,
    cache_for,
    caller_token,
    client_for,
    execution_id,
    namespace_of,
    order_of,
    query_of,
)
from .errors import Problem, bad_request
from .models import CancelBody, EventBody, RunBody, event_json, execution_json, parse_body, step_json, time_json

#: A list answer's header: where it came from, ``cache`` or ``apiserver`` (for operators and tests).
SOURCE = "X-Kubestep-Source"


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers)


async def cancel(request: web.Request) -> web.Response:
    """``POST /api/v1/executions/{id}/cancel``: the seed's call. 200 when the cancel is requested
    (or was already: repeating it is harmless), 404 without such a run, 409 once it finished."""
    name, namespace = execution_id(request), namespace_of(request)
    body = parse_body(CancelBody, await request.read())
    async with client_for(request, namespace) as client:
        execution = await client.request_cancel(name, body.reason, body.grace_period_seconds)
    if execution.finished:
        raise Problem(
            409,
            "AlreadyFinished",
            f"execution {name} already finished ({execution.status.phase}): there is nothing to cancel",
            extra={"execution_id": name, "namespace": namespace, "status": execution.status.phase},
        )
    cancellation = execution.cancellation
    return _json(
        {
            "execution_id": name,
            "namespace": namespace,
            # The run's phase right after the request: it ends Cancelled once its step in flight is done.
            "status": execution.status.phase,
            "cancel_requested": True,
            "cancelled_at": time_json(cancellation.requested_at if cancellation else None),
            "reason": cancellation.message if cancellation else None,
        }
    )


async def get_execution(request: web.Request) -> web.Response:
    """``GET /api/v1/executions/{id}``."""
    name, namespace = execution_id(request), namespace_of(request)
    async with client_for(request, namespace, history=True) as client:
        return _json(execution_json(await client.get_execution(name)))


async def list_executions(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/executions``: one page of a namespace's runs, filtered by ``workflow``,
    ``phase``, ``labelSelector`` and ``search`` (a part of the name), ordered by ``order`` (``name``
    or ``newest``); ``limit`` and ``continue`` page through them. With ``?watch=true``, the
    namespace's stream instead (``streams.stream_executions``), as ``kubectl get -w`` is the list's.

    From the shared cache when it can answer (``cache``), after the apiserver said, with the
    caller's token, that the caller may list runs in the namespace (``auth.Access``); otherwise a
    list on the apiserver with the caller's token."""
    if request.query.get("watch", "").lower() in ("true", "1"):
        return await streams.stream_executions(request)
    namespace, query = namespace_of(request), query_of(request)
    order = order_of(request)
    settings = request.app[SETTINGS]
    limit = _int(request.query.get("limit"), "limit", settings.default_page, 1, settings.max_page)
    continue_token = request.query.get("continue") or None
    cache = cache_for(request, namespace)
    if cache is not None:
        await request.app[ACCESS].require(caller_token(request), "list", namespace)
        try:
            page = cache.page(namespace, query, order=order, limit=limit, continue_token=continue_token)
        except BadContinue as e:
            raise _expired(str(e)) from None
        body = b"".join(
            (
                b'{"namespace":',
                _dumps(namespace),
                b',"items":[',
                b",".join(page.bodies),
                b'],"continue":',
                _dumps(page.continue_token),
                b',"resource_version":',
                _dumps(page.resource_version),
                b"}",
            )
        )
        return web.Response(body=body, content_type="application/json", headers={SOURCE: "cache"})
    if continue_token is not None and continue_token.startswith(TOKEN_PREFIX):
        raise _expired("the cache that made this continue token cannot answer now")
    fields = []
    if query.workflow:
        fields.append(f"spec.workflow={_field_value(query.workflow)}")
    if query.phase:
        fields.append(f"status.phase={query.phase}")
    async with client_for(request, namespace) as client:
        page_ = await client.list_executions(
            label_selector=request.query.get("labelSelector") or None,
            field_selector=",".join(fields) or None,
            limit=limit,
            continue_token=continue_token,
        )
    # The apiserver cannot search names nor order by age: both are applied to this page only
    # (docs/api.md), so a page may come back short, or empty with a continue token.
    items = [e for e in page_.items if query.search is None or query.search.lower() in e.id]
    if order == "newest":
        items.sort(key=lambda e: (e.created_at.isoformat() if e.created_at else "", e.id), reverse=True)
    return _json(
        {
            "namespace": namespace,
            "items": [execution_json(e) for e in items],
            "continue": page_.continue_token,
            "resource_version": page_.resource_version,
        },
        headers={SOURCE: "apiserver"},
    )


def _expired(why: str) -> Problem:
    return Problem(410, "Expired", f"{why}: list again without continue")


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


async def run_workflow(request: web.Request) -> web.Response:
    """``POST /api/v1/workflows/{workflow}/run``: 201 with the new run's id."""
    workflow, namespace = request.match_info["workflow"], namespace_of(request)
    if not 0 < len(workflow) <= 253:
        raise bad_request("a workflow id has 1 to 253 characters")
    body = parse_body(RunBody, await request.read())
    async with client_for(request, namespace) as client:
        handle = await client.start(
            workflow,
            body.payload,
            run_timeout_seconds=body.run_timeout_seconds,
            queue_timeout_seconds=body.queue_timeout_seconds,
            cancel_grace_period_seconds=body.cancel_grace_period_seconds,
            queue=body.queue,
            ttl_seconds_after_finished=body.ttl_seconds_after_finished,
            name=body.name,
            labels=body.labels,
        )
    return _json(
        {"execution_id": handle.id, "namespace": namespace, "workflow": workflow},
        status=201,
        headers={"Location": f"/api/v1/executions/{handle.id}?namespace={namespace}"},
    )


async def send_event(request: web.Request) -> web.Response:
    """``POST /api/v1/executions/{id}/events``: 201 with the event's name; 409 once the run
    finished (no wait will ever take it, as ``kubestep send-event`` says)."""
    name, namespace = execution_id(request), namespace_of(request)
    body = parse_body(EventBody, await request.read())
    async with client_for(request, namespace) as client:
        execution = await client.get_execution(name)
        if execution.finished:
            raise Problem(
                409,
                "AlreadyFinished",
                f"execution {name} already finished ({execution.status.phase}): no step will ever wait for this event",
                extra={"execution_id": name, "namespace": namespace, "status": execution.status.phase},
            )
        sent = await client.send_event(name, body.topic, body.data, name=body.name)
    return _json({"execution_id": name, "namespace": namespace, "event": sent, "topic": body.topic}, status=201)


async def steps(request: web.Request) -> web.Response:
    """``GET /api/v1/executions/{id}/steps``: every step record, archived ones included (reading
    the run's journal ConfigMaps needs ``get`` on ConfigMaps once a run has archived records)."""
    name, namespace = execution_id(request), namespace_of(request)
    async with client_for(request, namespace, history=True) as client:
        history = await client.step_history(name)
    return _json({"execution_id": name, "namespace": namespace, "steps": [step_json(s) for s in history]})


async def events(request: web.Request) -> web.Response:
    """``GET /api/v1/executions/{id}/events``: the run's Kubernetes Events, oldest first."""
    name, namespace = execution_id(request), namespace_of(request)
    async with client_for(request, namespace) as client:
        found = await client.events(name)
    return _json({"execution_id": name, "namespace": namespace, "events": [event_json(e) for e in found]})


async def healthz(request: web.Request) -> web.Response:
    """The kubelet's liveness probe: the event loop answers. No auth, no data."""
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    """The readiness probe: serving, and not stopping. It does not ask the apiserver: with it down
    every replica would go unready at once, and the API's own answers (502) say more."""
    if request.app[CLOSING].is_set():
        raise Problem(503, "ServiceUnavailable", "stopping")
    return web.Response(text="ok\n")


def _field_value(value: str) -> str:
    """A field selector's value, escaped as the apiserver reads it (``fields.EscapeValue``)."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


def _int(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise bad_request(f"{name} must be an integer") from None
    if not low <= number <= high:
        raise bad_request(f"{name} must be between {low} and {high}")
    return number
