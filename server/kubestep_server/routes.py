"""One handler per route of ``/api/v1`` (the streams: ``streams``), each a few calls of
``KubestepClient`` made with the caller's token (``context.client_for``). An error the SDK raises
goes up to the error middleware (``app``), which answers it (``errors.problem_for``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .context import CLOSING, SETTINGS, client_for, execution_id, namespace_of
from .errors import Problem, bad_request
from .models import CancelBody, EventBody, RunBody, event_json, execution_json, parse_body, step_json, time_json

#: ``?phase=``: the phases a run can be in (``status.phase``).
PHASES = ("Queued", "Running", "Waiting", "Cancelling", "Completed", "Failed", "Cancelled")


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
    async with client_for(request, namespace) as client:
        return _json(execution_json(await client.get_execution(name)))


async def list_executions(request: web.Request) -> web.Response:
    """``GET /api/v1/executions``: one page of a namespace's runs, filtered by ``workflow``,
    ``phase`` (field selectors the CRD declares) and ``labelSelector``; ``limit`` and ``continue``
    page through them as ``kubectl get --chunk-size`` does."""
    namespace, query = namespace_of(request), request.query
    settings = request.app[SETTINGS]
    fields = []
    if query.get("workflow"):
        fields.append(f"spec.workflow={_field_value(query['workflow'])}")
    if query.get("phase"):
        if query["phase"] not in PHASES:
            raise bad_request(f"phase must be one of {', '.join(PHASES)}")
        fields.append(f"status.phase={query['phase']}")
    limit = _int(query.get("limit"), "limit", settings.default_page, 1, settings.max_page)
    async with client_for(request, namespace) as client:
        page = await client.list_executions(
            label_selector=query.get("labelSelector") or None,
            field_selector=",".join(fields) or None,
            limit=limit,
            continue_token=query.get("continue") or None,
        )
    return _json(
        {
            "namespace": namespace,
            "items": [execution_json(e) for e in page.items],
            "continue": page.continue_token,
            "resource_version": page.resource_version,
        }
    )


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
    async with client_for(request, namespace) as client:
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
