"""What a handler takes from its request and its application: the settings, the caller's client,
and the names in the path and the query, checked before they go into an apiserver path.

Every name that ends up in an apiserver URL's path (a namespace, a run's name) is checked against
the form Kubernetes gives it, so no request can reach another path of the apiserver (``../``, an
encoded slash): the server answers for runs and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator

from aiohttp import web

from kubestep import KubestepClient, PostgresHistory

from .auth import Access, TokenClients, bearer_token
from .cache import ORDERS, Query, RunCache
from .errors import Problem, bad_request
from .selectors import SelectorError, parse
from .settings import ServerSettings

# RFC 1123 label (a namespace) and subdomain (an object's name), as Kubernetes validates them.
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclasses.dataclass
class StreamSlots:
    """The streams open now, at most ``limit``."""

    limit: int
    open: int = 0

    def take(self) -> None:
        if self.open >= self.limit:
            raise Problem(
                503,
                "ServiceUnavailable",
                f"this server has {self.limit} streams open, its most; try again later",
                headers={"Retry-After": "5"},
            )
        self.open += 1

    def give_back(self) -> None:
        self.open -= 1


SETTINGS = web.AppKey("settings", ServerSettings)
TOKENS = web.AppKey("tokens", TokenClients)
STREAMS = web.AppKey("streams", StreamSlots)
ACCESS = web.AppKey("access", Access)
#: Only with ``--cache``.
CACHE = web.AppKey("cache", RunCache)
#: Set when the server stops: open streams end at once instead of holding the shutdown up.
CLOSING = web.AppKey("closing", asyncio.Event)
#: Only with a DSN (``ServerSettings.postgres_dsn``): the Postgres step store, its one connection pool.
POSTGRES = web.AppKey("postgres", PostgresHistory)


#: The UI's sign-in cookie (``ui``): HttpOnly, SameSite=Strict; it holds the caller's token.
COOKIE = "kubestep_token"


def caller_token(request: web.Request) -> str:
    """The caller's bearer token: the ``Authorization`` header, else the UI's cookie (the auth
    middleware has refused a request with neither already)."""
    header = request.headers.get("Authorization")
    if header is None and request.cookies.get(COOKIE):
        return bearer_token(f"Bearer {request.cookies[COOKIE]}")
    return bearer_token(header)


def namespace_of(request: web.Request) -> str:
    """``?namespace=``, or the server's ``--namespace``."""
    namespace = request.query.get("namespace") or request.app[SETTINGS].namespace
    if len(namespace) > 63 or not _LABEL.fullmatch(namespace):
        raise bad_request(f"not a namespace name: {namespace[:80]!r}")
    return namespace


def execution_id(request: web.Request) -> str:
    """The run's name in the path (``{id}``)."""
    name = request.match_info["id"]
    if len(name) > 253 or not _SUBDOMAIN.fullmatch(name):
        raise bad_request(f"not a run name (a DNS subdomain: lower case letters, digits, '-', '.'): {name[:80]!r}")
    return name


#: ``?phase=``: the phases a run can be in (``status.phase``).
PHASES = ("Queued", "Running", "Waiting", "Cancelling", "Completed", "Failed", "Cancelled")


def query_of(request: web.Request) -> Query:
    """The list's and the stream's filters: ``labelSelector``, ``workflow``, ``phase``, ``search``
    (400 for a selector the apiserver would refuse, or an unknown phase)."""
    query = request.query
    try:
        selector = parse(query.get("labelSelector"))
    except SelectorError as e:
        raise bad_request(f"unable to parse the label selector: {e}") from None
    phase = query.get("phase") or None
    if phase is not None and phase not in PHASES:
        raise bad_request(f"phase must be one of {', '.join(PHASES)}")
    search = (query.get("search") or "").strip() or None
    if search is not None and len(search) > 253:
        raise bad_request("search is a part of a run's name: at most 253 characters")
    return Query(selector, query.get("workflow") or None, phase, search)


def order_of(request: web.Request) -> str:
    order = request.query.get("order") or "name"
    if order not in ORDERS:
        raise bad_request(f"order must be one of {', '.join(ORDERS)}")
    return order


def cache_for(request: web.Request, namespace: str) -> RunCache | None:
    """The shared cache, if it can answer for ``namespace`` now (``RunCache.ready``)."""
    cache = request.app.get(CACHE)
    return cache if cache is not None and cache.ready(namespace) else None


def is_name(name: str) -> bool:
    """Whether ``name`` can be a run's name (a DNS subdomain)."""
    return len(name) <= 253 and bool(_SUBDOMAIN.fullmatch(name))


@contextlib.asynccontextmanager
async def client_for(request: web.Request, namespace: str, *, history: bool = False) -> AsyncIterator[KubestepClient]:
    """A client of ``namespace`` that makes every request with the caller's token. ``history``: it
    reads step records (a run's, or a deleted run's kept state) from the Postgres step store too, if
    the server has one, with the server's own connection. What it reads there is authorized by the
    apiserver all the same: the client GETs the run with the caller's token first, and reads the
    store for the uid that answer names, or, for a run retention deleted, only after a 404, which
    the apiserver gives only to a caller who may ``get`` that run (any other gets 403, whether or
    not it exists: ``tests/test_postgres_store.py``)."""
    settings = request.app[SETTINGS]
    postgres = request.app.get(POSTGRES) if history else None
    async with request.app[TOKENS].lease(caller_token(request)) as kube:
        yield KubestepClient.from_kube(kube, namespace, field_manager=settings.field_manager, postgres=postgres)
