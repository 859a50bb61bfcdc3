"""``POST /api/v1/executions/cancel``: cancel many runs at once, named or matched by a filter, with
one reason (the UI's "Cancel selected" and "Cancel all matching").

Each run is cancelled by its own request with the caller's token, exactly as the single cancel is
(``KubestepClient.request_cancel``), so RBAC, admission policies and the cancel audit apply to
every one of them, and one refusal does not stop the others: the answer reports each run's outcome
with the status the single cancel would have answered (200, 403, 404, 409). A filter is resolved
to names first, with the same rights a list needs (from the shared cache when it can answer); runs
that have finished are left out of it. At most ``max_bulk`` runs per request: a filter matching
more is refused (400), rather than cancelling an arbitrary part of them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from pydantic import Field, field_validator, model_validator

from kubestep import KubestepClient

from .cache import Query
from .context import ACCESS, SETTINGS, cache_for, caller_token, client_for, is_name, namespace_of
from .errors import bad_request, problem_for
from .models import _Body, parse_body, time_json
from .selectors import SelectorError, parse

#: Cancels in flight at once for one bulk request: enough to finish a thousand in seconds, few
#: enough not to crowd the apiserver's priority level for the caller's other requests.
CONCURRENCY = 8
UNFINISHED = frozenset({"", "Queued", "Running", "Waiting", "Cancelling"})


class Filter(_Body):
    workflow: str | None = None
    phase: str | None = None
    label_selector: str | None = None
    search: str | None = Field(None, max_length=253)


class BulkCancelBody(_Body):
    """Either ``names`` or ``filter``; ``reason`` and ``grace_period_seconds`` as for one cancel."""

    names: list[str] | None = Field(None, min_length=1, max_length=10_000)
    filter: Filter | None = None
    reason: str | None = Field(None, max_length=1024)
    grace_period_seconds: int | None = Field(None, ge=0, le=86400)

    @field_validator("names")
    @classmethod
    def _names(cls, names: list[str] | None) -> list[str] | None:
        if names is not None:
            bad = [n for n in names if not is_name(n)]
            if bad:
                raise ValueError(f"not run names: {', '.join(repr(n[:80]) for n in bad[:5])}")
            names = list(dict.fromkeys(names))  # each once, in the order given
        return names

    @model_validator(mode="after")
    def _one_of(self) -> BulkCancelBody:
        if (self.names is None) == (self.filter is None):
            raise ValueError("give either names or filter")
        return self


async def bulk_cancel(request: web.Request) -> web.Response:
    namespace = namespace_of(request)
    body = parse_body(BulkCancelBody, await request.read())
    limit = request.app[SETTINGS].max_bulk
    if body.names is not None:
        names = body.names
    else:
        assert body.filter is not None
        names = await _matching(request, namespace, _query(body.filter), limit)
    if len(names) > limit:
        raise bad_request(f"{len(names)} runs named or matched; at most {limit} per request: narrow it down")
    gate = asyncio.Semaphore(CONCURRENCY)
    async with client_for(request, namespace) as client:

        async def one(name: str) -> dict[str, Any]:
            async with gate:
                return await _cancel_one(client, name, body.reason, body.grace_period_seconds)

        results = await asyncio.gather(*(one(n) for n in names))
    cancelled = sum(1 for r in results if r["status"] == 200)
    return web.json_response(
        {
            "namespace": namespace,
            "requested": len(names),
            "cancelled": cancelled,
            "failed": len(names) - cancelled,
            "results": results,
        }
    )


async def _cancel_one(client: KubestepClient, name: str, reason: str | None, grace: int | None) -> dict[str, Any]:
    try:
        execution = await client.request_cancel(name, reason, grace)
    except Exception as e:
        problem = problem_for(e)
        if problem is None:
            raise  # a bug of ours: the whole request is a 500, logged
        if problem.status == 401:
            raise problem from None  # the token stopped working: nothing else will either
        return {"execution_id": name, "status": problem.status, "reason": problem.reason, "error": problem.message}
    if execution.finished:
        return {
            "execution_id": name,
            "status": 409,
            "reason": "AlreadyFinished",
            "error": f"execution {name} already finished ({execution.status.phase}): there is nothing to cancel",
            "phase": execution.status.phase,
        }
    cancellation = execution.cancellation
    return {
        "execution_id": name,
        "status": 200,
        "phase": execution.status.phase,
        "cancelled_at": time_json(cancellation.requested_at if cancellation else None),
    }


def _query(f: Filter) -> Query:
    if f.phase and f.phase not in UNFINISHED:
        raise bad_request(f"phase must be one of Queued, Running, Waiting, Cancelling: a {f.phase} run has finished")
    try:
        selector = parse(f.label_selector)
    except SelectorError as e:
        raise bad_request(f"unable to parse the label selector: {e}") from None
    return Query(selector, f.workflow or None, f.phase or None, (f.search or "").strip() or None)


async def _matching(request: web.Request, namespace: str, query: Query, limit: int) -> list[str]:
    """The unfinished runs ``query`` matches (one more than ``limit`` at most: enough to refuse)."""
    cache = cache_for(request, namespace)
    if cache is not None:
        await request.app[ACCESS].require(caller_token(request), "list", namespace)
        return sorted(e.name for e in cache.matching(namespace, query) if e.phase in UNFINISHED)[: limit + 1]
    names: list[str] = []
    token: str | None = None
    async with client_for(request, namespace) as client:
        while len(names) <= limit:
            page = await client.list_executions(
                label_selector=request_selector(query) or None,
                limit=500,
                continue_token=token,
            )
            names += [e.id for e in page.items if (e.status.phase or "") in UNFINISHED and query.matches_execution(e)]
            token = page.continue_token
            if token is None:
                break
    return names[: limit + 1]


def request_selector(query: Query) -> str:
    """The label selector again as text, for the apiserver (the parsed form is only for matching)."""
    parts = []
    for r in query.selector.requirements:
        if r.op == "exists":
            parts.append(r.key)
        elif r.op == "!exists":
            parts.append(f"!{r.key}")
        else:
            parts.append(f"{r.key} {r.op} ({','.join(sorted(r.values))})")
    return ",".join(parts)
