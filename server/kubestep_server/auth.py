"""The caller's identity: its bearer token, the apiserver clients that carry it, and access reviews.

The server never decides who may do what. It reads the caller's ``Authorization: Bearer <token>``
(a ServiceAccount token, an OIDC token: whatever the apiserver accepts) and makes every request for
the caller with that token, over a client of its own (``Kube.for_token``: the server's apiserver URL
and CA, no other credential). The apiserver authenticates it (401 if it does not) and authorizes
each request with RBAC (403), as it would the caller's ``kubectl``; its admission policies see the
caller as the user (the chart's cancel audit records them).

A request without a usable token is refused here, before anything reaches the apiserver: there is
nothing to ask it with.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from kubestep import KubestepError
from kubestep._kube import Kube

from .errors import Problem, unauthorized

#: What ``kubestep server`` guards: the runs (the same names as the CRD's).
GROUP = "kubestep.io"
VERSION = "v1alpha1"
RESOURCE = "workflowexecutions"


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; ``Problem`` 401 for anything else.

    The scheme is case-insensitive (RFC 7235). The token must be one word of visible ASCII: that
    covers every token Kubernetes issues or accepts (JWTs, bootstrap and static tokens), and nothing
    that could split or smuggle a header when it is sent on."""
    if not header or not header.strip():
        raise unauthorized("no credentials: send the header Authorization: Bearer <a Kubernetes token>")
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise unauthorized(f"the {scheme[:20]!r} scheme is not accepted: send Authorization: Bearer <token>")
    token = rest.strip()
    if not token:
        raise unauthorized("the bearer token is empty: send Authorization: Bearer <token>")
    if not all("!" <= c <= "~" for c in token):
        raise unauthorized("the bearer token is malformed: one word of visible ASCII characters expected")
    return token


def token_key(token: str) -> str:
    """The cache's key for a token: a digest, so that no dictionary of tokens is kept in the clear."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclasses.dataclass
class _Entry:
    kube: Kube
    last_used: float
    users: int = 0  # requests and streams using it now
    retired: bool = False  # out of the cache: closed as soon as its last user is done


class TokenClients:
    """A bounded cache of per-token apiserver clients (least recently used dropped first), so that a
    caller's requests reuse its connections (a TLS handshake each otherwise) and the server holds
    no more than ``size`` clients beyond those in use.

    An entry leaves the cache when it is the least recently used of ``size + 1``, when it was unused
    for ``idle_seconds``, or when the apiserver refused its token (``forget``: a stream of garbage
    tokens churns nothing but itself). It is closed when it leaves, or, if a request or a stream
    still uses it, when that one is done."""

    def __init__(
        self,
        make: Callable[[str], Kube],
        *,
        size: int = 256,
        idle_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._make = make
        self._size = size
        self._idle = idle_seconds
        self._clock = clock
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        #: Clients made so far: every one is a caller's identity presented to the apiserver.
        self.made = 0

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def lease(self, token: str) -> AsyncIterator[Kube]:
        """The client of ``token``, for as long as the ``async with`` lasts."""
        await self.sweep()
        key = token_key(token)
        entry = self._entries.get(key)
        if entry is None:
            entry = _Entry(self._make(token), self._clock())
            self._entries[key] = entry
            self.made += 1
            await self._evict()
        else:
            self._entries.move_to_end(key)
        entry.users += 1
        entry.last_used = self._clock()
        try:
            yield entry.kube
        finally:
            entry.users -= 1
            entry.last_used = self._clock()
            if entry.retired and entry.users == 0:
                await entry.kube.aclose()

    async def forget(self, token: str) -> None:
        """The apiserver refused ``token`` (401): drop its client, so that it keeps no place."""
        entry = self._entries.pop(token_key(token), None)
        if entry is not None:
            await self._retire(entry)

    async def sweep(self) -> None:
        """Closes the clients unused for ``idle_seconds``."""
        now = self._clock()
        idle = [k for k, e in self._entries.items() if e.users == 0 and now - e.last_used >= self._idle]
        for key in idle:
            await self._retire(self._entries.pop(key))

    async def aclose(self) -> None:
        """Closes every client (the server is stopping); those in use, when their user is done."""
        while self._entries:
            _, entry = self._entries.popitem(last=False)
            await self._retire(entry)

    async def _evict(self) -> None:
        while len(self._entries) > self._size:
            _, entry = self._entries.popitem(last=False)
            await self._retire(entry)

    @staticmethod
    async def _retire(entry: _Entry) -> None:
        entry.retired = True
        if entry.users == 0:
            await entry.kube.aclose()


async def require(kube: Kube, verb: str, namespace: str) -> None:
    """``Problem`` 403 unless the token's holder may ``verb`` runs in ``namespace``: asked of the
    apiserver (a SelfSubjectAccessReview, which every authenticated user may make; nothing is
    stored). For what the server cannot simply try with the caller's token: a stream follows a run
    with a list and a watch, and a watch refused would only be retried, quietly, for ever."""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"namespace": namespace, "verb": verb, "group": GROUP, "resource": RESOURCE}},
    }
    answer: dict[str, Any] = await kube.create("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)
    status = answer.get("status") or {}
    if not status.get("allowed") or status.get("denied"):
        why = f" ({status['reason']})" if status.get("reason") else ""
        raise Problem(
            403,
            "Forbidden",
            f'{RESOURCE}.{GROUP} is forbidden: you cannot {verb} resource "{RESOURCE}" in API group "{GROUP}" '
            f'in the namespace "{namespace}"{why}',
        )


async def sweep_every(clients: TokenClients, seconds: float) -> None:
    """Closes idle clients while no request comes to do it (``lease`` sweeps too)."""
    while True:
        await asyncio.sleep(seconds)
        await clients.sweep()


def forbidden(user: str | None, verb: str, namespace: str, why: str | None = None) -> Problem:
    """The apiserver's own refusal, word for word as ``kubectl`` prints it."""
    who = f'User "{user}"' if user else "you"
    return Problem(
        403,
        "Forbidden",
        f'{RESOURCE}.{GROUP} is forbidden: {who} cannot {verb} resource "{RESOURCE}" in API group "{GROUP}" '
        f'in the namespace "{namespace}"' + (f" ({why})" if why else ""),
    )


@dataclasses.dataclass
class _Decision:
    allowed: bool
    problem: Problem | None
    expires: float


class Access:
    """Who may list and watch runs, for what the server answers from its own cache (``cache``)
    instead of asking the apiserver with the caller's token.

    Each decision is the apiserver's: a SelfSubjectAccessReview made **with the caller's token**
    (which authenticates the token, 401 if the apiserver does not take it, and authorizes the verb
    in the namespace, in one request), and on a refusal a SelfSubjectReview with the same token for
    the user's name, so the 403 reads as kubectl's. Both are open to every authenticated user, so
    the server's own ServiceAccount needs no ``create`` on tokenreviews or subjectaccessreviews
    (which would let it check any token and probe anyone's rights): only get/list/watch on runs.

    Decisions are kept ``ttl`` seconds (keyed by the token's digest, the verb and the namespace;
    at most ``size``, the oldest dropped first): a removed RoleBinding takes effect on cached
    answers within ``ttl``, as a token's review does in the apiserver's own cache. A 401 is never
    kept: it goes up as it came."""

    def __init__(
        self,
        clients: TokenClients,
        *,
        ttl: float = 10.0,
        size: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clients = clients
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._decisions: collections.OrderedDict[tuple[str, str, str], _Decision] = collections.OrderedDict()
        #: Reviews asked of the apiserver (the rest were answered from the kept decisions).
        self.reviews = 0

    async def require(self, token: str, verb: str, namespace: str) -> None:
        """``Problem`` 403 unless the token's holder may ``verb`` runs in ``namespace``."""
        key = (token_key(token), verb, namespace)
        now = self._clock()
        decision = self._decisions.get(key)
        if decision is None or decision.expires <= now:
            decision = await self._decide(token, verb, namespace)
            self._decisions[key] = decision
            self._decisions.move_to_end(key)
            while len(self._decisions) > self._size:
                self._decisions.popitem(last=False)
        if not decision.allowed:
            assert decision.problem is not None
            raise decision.problem

    def forget(self, token: str) -> None:
        """The apiserver refused ``token``: nothing decided for it stays."""
        digest = token_key(token)
        for key in [k for k in self._decisions if k[0] == digest]:
            del self._decisions[key]

    async def _decide(self, token: str, verb: str, namespace: str) -> _Decision:
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {"namespace": namespace, "verb": verb, "group": GROUP, "resource": RESOURCE}
            },
        }
        self.reviews += 1
        async with self._clients.lease(token) as kube:
            answer: dict[str, Any] = await kube.create("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)
            status = answer.get("status") or {}
            expires = self._clock() + self._ttl
            if status.get("allowed") and not status.get("denied"):
                return _Decision(True, None, expires)
            user = await _username(kube)
        return _Decision(False, forbidden(user, verb, namespace, status.get("reason") or None), expires)


async def _username(kube: Kube) -> str | None:
    """The token's user as the apiserver sees it (a SelfSubjectReview), or None if it will not say."""
    try:
        answer: dict[str, Any] = await kube.create(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
    except KubestepError:
        return None
    name = ((answer.get("status") or {}).get("userInfo") or {}).get("username")
    return name if isinstance(name, str) else None
