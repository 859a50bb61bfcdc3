"""The shared, watch-fed cache of runs: what the list and the namespace's stream are answered from
when ``--cache`` is on (docs/api.md, "The cache").

Without it every list request is a list on the apiserver with the caller's token, and every open
namespace stream is a list of the whole namespace and a watch of its own: with 10,000 runs and a
hundred browsers, a hundred copies of 10,000 runs. With it the server keeps **one** informer per
scope (every namespace, or each namespace named; ``kubestep._informer``, the same loop as the
operator's), made with the server's own ServiceAccount (get/list/watch on runs, nothing else), and
answers from memory. Who may see what is still decided by the apiserver, per caller, before
anything is answered from here (``auth.Access``); writes never come near the cache.

Each run is kept as a small record for filtering and its JSON already encoded (``body``), so that
a page of 500 is a join of bytes, not 500 model dumps. Every change stamps the run with ``seq``, a
number that only grows in this process: it is in each run's JSON (``cache_seq``), so a client
merging a page with stream messages keeps the newer of two states without comparing
resourceVersions (which Kubernetes says are opaque).

A scope's cache is used only once its first list is complete and while its informer hears from the
apiserver (a bookmark comes at least once a minute): otherwise (the server's ServiceAccount lacks
the RBAC, the apiserver is unreachable) requests go to the apiserver with the caller's token, as
without the cache, so an unusable cache costs speed and never correctness.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from kubestep import Execution
from kubestep._informer import Change, Informer
from kubestep._kube import Kube

from . import sse
from .auth import GROUP, RESOURCE, VERSION
from .models import execution_json
from .selectors import Selector

logger = logging.getLogger("kubestep.server")

#: How the list is ordered: by name (as the apiserver and kubectl list), or newest first (the UI).
ORDERS = ("name", "newest")
#: Continue tokens of the cache start with this, so one is never sent to the apiserver (and an
#: apiserver token is never read as a position here).
TOKEN_PREFIX = "c1."


@dataclasses.dataclass(slots=True)
class Entry:
    """One run as the cache keeps it."""

    namespace: str
    name: str
    workflow: str
    phase: str
    labels: dict[str, str]
    created: str  # metadata.creationTimestamp, RFC 3339 (sorts as time)
    finished: bool
    resource_version: str
    seq: int
    body: bytes  # the run's JSON (``models.execution_json`` with ``cache_seq``), one line


@dataclasses.dataclass(frozen=True)
class Query:
    """What a list or a stream asks for, beyond the namespace."""

    selector: Selector = dataclasses.field(default_factory=Selector)
    workflow: str | None = None
    phase: str | None = None
    search: str | None = None  # a substring of the run's name, case-insensitive

    def matches(self, entry: Entry) -> bool:
        return (
            (self.workflow is None or entry.workflow == self.workflow)
            and (self.phase is None or entry.phase == self.phase)
            and (self.search is None or self.search.lower() in entry.name)
            and self.selector.matches(entry.labels)
        )

    def matches_execution(self, execution: Execution) -> bool:
        """The same test on a run that did not come from the cache (``streams``, without it)."""
        return (
            (self.workflow is None or execution.workflow == self.workflow)
            and (self.phase is None or execution.status.phase == self.phase)
            and (self.search is None or self.search.lower() in execution.id)
            and self.selector.matches(execution.labels or {})
        )


@dataclasses.dataclass
class Page:
    bodies: list[bytes]
    continue_token: str | None
    resource_version: str


class BadContinue(ValueError):
    """A continue token this cache did not make, or made for another order."""


class Subscriber:
    """One open stream's view of the changes: their SSE messages, queued up to ``size``. A stream
    that falls that far behind is ended (``overflowed``), so that a slow client costs the server a
    bounded amount of memory; it reconnects and starts again from the current state."""

    def __init__(self, namespace: str, query: Query, size: int) -> None:
        self.namespace = namespace
        self.query = query
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(size)
        self.overflowed = False

    def offer(self, message: bytes) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            # The queue is full, so its stream is not waiting on it: it sees the flag after its next message.
            self.overflowed = True


class _Scope:
    """One informer: every namespace (``namespace`` None) or one."""

    def __init__(self, cache: RunCache, namespace: str | None) -> None:
        where = f"namespaces/{namespace}/" if namespace else ""
        self.namespace = namespace
        self.informer = Informer(
            cache.kube,
            f"/apis/{GROUP}/{VERSION}/{where}{RESOURCE}",
            cache._apply,
            cache._listed if namespace is None else lambda keys: cache._listed(keys, namespace),
            name=f"server-cache-{namespace or 'all'}",
            page_bytes=4 * 1024 * 1024,  # a page of runs with large inputs stays about this size
        )


class RunCache:
    """The runs of ``namespaces`` (empty: every namespace), kept by one informer per scope."""

    def __init__(
        self,
        kube: Kube,
        namespaces: tuple[str, ...] = (),
        *,
        queue_size: int = 1000,
        stale_seconds: float = 180.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.namespaces = frozenset(namespaces)
        self._queue_size = queue_size
        self._stale = stale_seconds
        self._clock = clock
        self._runs: dict[str, dict[str, Entry]] = {}  # namespace -> name -> entry
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._seq = 0
        self._indexes: dict[tuple[str, str], list[tuple[tuple[str, str], str]]] = {}  # ``_index``
        self._scopes = [_Scope(self, ns) for ns in sorted(namespaces)] if namespaces else [_Scope(self, None)]

    # ----- state -----------------------------------------------------------------------------------

    def covers(self, namespace: str) -> bool:
        return not self.namespaces or namespace in self.namespaces

    def ready(self, namespace: str) -> bool:
        """Whether ``namespace`` can be answered from here: covered, listed, and heard from lately."""
        if not self.covers(namespace):
            return False
        informer = self._scope(namespace).informer
        return informer.listed.is_set() and self._clock() - informer.last_contact < self._stale

    def __len__(self) -> int:
        return sum(len(runs) for runs in self._runs.values())

    def resource_version(self, namespace: str) -> str:
        return self._scope(namespace).informer.resource_version or ""

    def _scope(self, namespace: str) -> _Scope:
        if not self.namespaces:
            return self._scopes[0]
        return next(s for s in self._scopes if s.namespace == namespace)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Runs the informers for as long as the ``async with`` lasts."""
        tasks = [asyncio.create_task(s.informer.run(), name=s.informer.name) for s in self._scopes]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ----- reading ---------------------------------------------------------------------------------

    def page(self, namespace: str, query: Query, *, order: str, limit: int, continue_token: str | None) -> Page:
        """One page of ``namespace``'s runs matching ``query``, in ``order``, after the position a
        ``continue_token`` of an earlier page names. Pages are positions in the order, not one
        snapshot: a run created between two pages appears in the later one if it sorts after the
        position, and one deleted meanwhile is simply not there.

        The order is kept (``_index``), since neither a name nor a creation time ever changes: only
        a run added or deleted sorts it again, so a page without filters reads ``limit`` runs, not
        all of them."""
        after = _position(continue_token, order) if continue_token else None
        runs = self._runs.get(namespace, {})
        index = self._index(namespace, order)
        newest = order == "newest"
        if newest:
            start = len(index) if after is None else bisect.bisect_left(index, (after, ""))
            positions: Iterator[int] = iter(range(start - 1, -1, -1))
        else:
            start = 0 if after is None else bisect.bisect_right(index, (after, "\uffff"))
            positions = iter(range(start, len(index)))
        chosen: list[Entry] = []
        last: tuple[str, str] | None = None
        more = False
        for i in positions:
            key, name = index[i]
            entry = runs.get(name)
            if entry is None or not query.matches(entry):
                continue
            if len(chosen) == limit:
                more = True
                break
            chosen.append(entry)
            last = key
        token = _token(order, last) if more and last is not None else None
        return Page([e.body for e in chosen], token, self.resource_version(namespace))

    def _index(self, namespace: str, order: str) -> list[tuple[tuple[str, str], str]]:
        """``namespace``'s runs as ``(sort key, name)``, ascending; made again only after a run was
        added or deleted there."""
        index = self._indexes.get((namespace, order))
        if index is None:
            runs = self._runs.get(namespace, {}).values()
            if order == "newest":
                index = sorted(((e.created, e.name), e.name) for e in runs)
            else:
                index = sorted(((e.name, ""), e.name) for e in runs)
            self._indexes[(namespace, order)] = index
        return index

    def matching(self, namespace: str, query: Query) -> Iterator[Entry]:
        """Every run of ``namespace`` matching ``query``, in no particular order."""
        return (e for e in list(self._runs.get(namespace, {}).values()) if query.matches(e))

    @contextlib.contextmanager
    def subscribe(self, namespace: str, query: Query) -> Iterator[Subscriber]:
        """The changes of ``namespace``'s runs matching ``query`` from now on, for as long as the
        ``with`` lasts."""
        subscriber = Subscriber(namespace, query, self._queue_size)
        self._subscribers.setdefault(namespace, set()).add(subscriber)
        try:
            yield subscriber
        finally:
            self._subscribers[namespace].discard(subscriber)

    def subscribers(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    # ----- the informers' callbacks --------------------------------------------------------------

    def _apply(self, change: Change) -> None:
        namespace, name = change.key
        runs = self._runs.setdefault(namespace, {})
        if change.kind == "DELETED":
            self._reorder(namespace)
            gone = runs.pop(name, None) or self._entry(change.obj)
            self._publish("DELETED", gone, listed=False)
            return
        entry = self._entry(change.obj)
        old = runs.get(name)
        if old is not None and old.resource_version == entry.resource_version:
            return  # a re-list showing what is already here: no news
        runs[name] = entry
        if old is None:
            self._reorder(namespace)
        self._publish("ADDED" if old is None else "MODIFIED", entry, listed=change.listed)

    def _listed(self, keys: set[tuple[str, str]], namespace: str | None = None) -> None:
        """A complete list: what it no longer holds was deleted while the watch was away."""
        for ns, runs in list(self._runs.items()):
            if namespace is not None and ns != namespace:
                continue
            for name in [n for n in runs if (ns, n) not in keys]:
                self._reorder(ns)
                self._publish("DELETED", runs.pop(name), listed=True)

    def _reorder(self, namespace: str) -> None:
        for order in ORDERS:
            self._indexes.pop((namespace, order), None)

    def _entry(self, obj: dict[str, Any]) -> Entry:
        self._seq += 1
        execution = Execution.from_object(obj)
        data = execution_json(execution)
        data["cache_seq"] = self._seq
        meta = obj.get("metadata") or {}
        return Entry(
            namespace=execution.namespace,
            name=execution.id,
            workflow=execution.workflow,
            phase=execution.status.phase or "",
            labels=dict(execution.labels or {}),
            created=str(meta.get("creationTimestamp") or ""),
            finished=execution.finished,
            resource_version=data["resource_version"],
            seq=self._seq,
            body=json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(),
        )

    def _publish(self, kind: str, entry: Entry, *, listed: bool) -> None:
        subscribers = self._subscribers.get(entry.namespace)
        if not subscribers:
            return
        message = change_message(kind, entry, listed=listed)
        for subscriber in list(subscribers):
            if subscriber.query.matches(entry):
                subscriber.offer(message)


def change_message(kind: str, entry: Entry, *, listed: bool) -> bytes:
    """A namespace stream's ``change`` message for ``entry``, built from its encoded JSON (the same
    bytes ``models.change_json`` would give, without encoding the run again)."""
    data = b'{"type":"' + kind.encode() + b'","listed":' + (b"true" if listed else b"false")
    return sse.raw_message(data + b',"execution":' + entry.body + b"}", event="change", id=entry.resource_version)


def _token(order: str, key: tuple[str, str]) -> str:
    raw = json.dumps([order, *key], separators=(",", ":")).encode()
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _position(token: str, order: str) -> tuple[str, str]:
    if not token.startswith(TOKEN_PREFIX):
        raise BadContinue("this continue token was not made by this server's cache")
    body = token[len(TOKEN_PREFIX) :]
    try:
        value = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, binascii.Error):
        raise BadContinue("the continue token is malformed") from None
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) for v in value)):
        raise BadContinue("the continue token is malformed")
    if value[0] != order:
        raise BadContinue(f"the continue token was made for order={value[0]}, not order={order}")
    return value[1], value[2]
