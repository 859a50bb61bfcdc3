"""One list-and-watch loop for every watcher: the operator's runs and Leases, the worker's streams, a
client waiting for a run, ``kubestep watch``.

Each of them once had a loop of its own with its own retry rules, and each got one wrong: the
operator's re-listed every object twice a second for ever when a watch failed right after each list
(RBAC that allows ``list`` but not ``watch``, an APF-rejected watch, a proxy that drops long
requests); the others threw away the resourceVersion on any transport blip and re-listed, or died on a
connection reset (issue 18). These are client-go's rules (``tools/cache/reflector.go``):

* **List** page by page from a consistent read (no resourceVersion on the first page), then **watch**
  from the list's resourceVersion with bookmarks, the server's ``timeoutSeconds`` spread over
  300–600 s so that thousands of watchers do not come back together.
* A watch that **ends** (the server's timeout, a cut connection, a stream gone quiet past
  ``idle_seconds``) after it was healthy — open at least ``SHORT_WATCH`` seconds, or with an event —
  is **resumed at once** from the last resourceVersion seen (an event's or a bookmark's). Nothing is
  re-read.
* A watch that **cannot be opened** (refused, 403, 429, 5xx), an ``ERROR`` event other than 410, or a
  watch that ends at once with nothing in it, is resumed from the same resourceVersion **after a
  backoff**.
* Only a **410 Gone** (an ``ERROR`` event or the HTTP status; the resourceVersion was compacted away,
  or a list's continue token outlived its snapshot) makes it **list again**: at once when nothing
  failed for a while, after a backoff otherwise. Every re-list is counted (``kubestep_informer_relists_total``) and
  logged with its cause.
* The **backoff** (``Backoff``) is client-go's: 0.8 s doubling to 30 s, jittered, and it starts again
  from 0.8 s only after ``reset_after`` (2 min) without a failure — so a failure right after each
  successful list still backs off further each time.

Handlers get typed ``Change`` records; what one raises concerns that object alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, Protocol

from ._errors import ApiError, TransportError
from ._metrics import INFORMER_HANDLER_ERRORS, INFORMER_RELISTS, INFORMER_RESUMES

logger = logging.getLogger("kubestep.informer")

Kind = Literal["ADDED", "MODIFIED", "DELETED"]
Key = tuple[str, str]  # (namespace, name)

SHORT_WATCH = 1.0  # seconds: a watch that ends sooner with nothing in it is a failure (client-go's rule)
FIRST_PAGE = 10  # objects in the first list page when pages follow the objects' weight


@dataclasses.dataclass(frozen=True)
class Change:
    """One object as a list or a watch event showed it."""

    kind: Kind
    obj: dict[str, Any]
    listed: bool = False  # from a list (a consistent read of the whole collection), not a watch event

    @property
    def key(self) -> Key:
        meta = self.obj.get("metadata") or {}
        return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class Source(Protocol):
    """What an informer reads through: ``kubestep._kube.Kube``, or a scripted fake in the unit tests."""

    async def get_sized(self, path: str, params: dict[str, Any] | None = None) -> tuple[Any, int]: ...

    def watch(
        self,
        path: str,
        resource_version: str,
        params: dict[str, Any] | None = None,
        timeout_seconds: int = 300,
        idle_seconds: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]: ...


@dataclasses.dataclass
class Backoff:
    """client-go's exponential backoff manager: ``initial`` doubling up to ``cap``, each delay
    stretched by up to ``jitter`` of itself (and then capped), back to ``initial`` only once
    ``reset_after`` seconds have passed without a failure."""

    initial: float = 0.8
    cap: float = 30.0
    reset_after: float = 120.0
    jitter: float = 1.0
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = dataclasses.field(default_factory=random.Random)
    _delay: float = 0.0
    _last: float | None = None

    def next(self) -> float:
        """The delay before the next attempt, after a failure now."""
        now = self.clock()
        if self._last is None or now - self._last >= self.reset_after:
            self._delay = self.initial
        else:
            self._delay = min(self.cap, self._delay * 2)
        self._last = now
        return min(self.cap, self._delay * (1 + self.jitter * self.rng.random()))

    @property
    def fresh(self) -> bool:
        """No failure for ``reset_after`` seconds: the next one waits only ``initial``."""
        return self._last is None or self.clock() - self._last >= self.reset_after


def next_page(limit: int, items: int, size: int, target: int, most: int) -> int:
    """How many objects the next list page may hold so that it weighs about ``target`` bytes, judged
    by the page just read (``items`` objects in ``size`` bytes): at least 1, at most ``most``, and
    at most four times the last limit (a page of small objects says little about the next)."""
    if items == 0 or size <= 0:
        return min(most, limit * 4)
    per_object = size / items
    return max(1, min(most, limit * 4, int(target / per_object)))


class Gone(Exception):
    """The resourceVersion to resume from, or a list's continue token, is gone (410): list again."""


class _ShortWatch(Exception):
    """A watch that ended at once with nothing in it."""


OnChange = Callable[[Change], None]
OnListed = Callable[[set[Key]], None]  # every (namespace, name) the latest complete list held
OnError = Callable[[Change, Exception], None]


@dataclasses.dataclass
class Informer:
    source: Source
    path: str  # the collection, e.g. /apis/kubestep.io/v1alpha1/namespaces/NS/workflowexecutions
    on_change: OnChange
    on_listed: OnListed | None = None
    params: dict[str, str] = dataclasses.field(default_factory=dict)  # a labelSelector, a fieldSelector
    name: str = ""  # for logs and the metrics' ``informer`` label (default: the path)
    page: int = 500  # objects a list page holds at most
    # What a list page should weigh: the page size follows the objects' size, from a first page of
    # FIRST_PAGE objects. A run may carry an input of up to 1.5 MiB (etcd's limit), and 500 such runs
    # in one page once took a restarted operator past its memory limit. 0: fixed pages of ``page``.
    page_bytes: int = 0
    watch_seconds: tuple[int, int] = (300, 600)  # the server ends a watch after a time drawn from here
    # The apiserver sends a bookmark once a minute to a watch that asked for them, filtered or not
    # (kube-apiserver 1.35, measured: at 59.8 s and 119.8 s on a quiet namespace); a stream silent for
    # longer is dead without having said so (a half-open connection): open another.
    idle_seconds: float = 90.0
    backoff: Backoff = dataclasses.field(default_factory=Backoff)
    on_error: OnError | None = None  # a handler raised: besides the informer's own log line and count
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = dataclasses.field(default_factory=random.Random)

    listed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)  # the first list is done
    last_contact: float = dataclasses.field(default_factory=time.monotonic)  # a list page, an event or a bookmark
    last_failure: float = -1.0  # when a list or watch last failed or broke off (clock), -1: never
    lists: int = 0  # complete lists, the first included
    resumes: int = 0  # watches opened again from a resourceVersion already held
    resource_version: str | None = None  # the last one seen: where a watch resumes

    def __post_init__(self) -> None:
        self.name = self.name or self.path

    async def run(self) -> None:
        """Lists, then watches, for ever (until cancelled)."""
        while True:
            if self.resource_version is None:
                try:
                    self.resource_version = await self._list()
                except Gone:
                    await self._relist_after("the list's continue token expired (410)")
                    continue
                except (ApiError, TransportError, ValueError, KeyError, TypeError) as e:
                    self.last_failure = self.clock()
                    delay = self.backoff.next()
                    logger.warning("listing %s failed (%r); again in %.1f s", self.name, e, delay)
                    await self.sleep(delay)
                    continue
            started, events = self.clock(), [0]
            try:
                await self._watch(self.resource_version, events)
                if events[0] == 0 and self.clock() - started < SHORT_WATCH:
                    raise _ShortWatch()
                self._resumed("the server ended the watch")
            except Gone:
                await self._relist_after("the resourceVersion expired (410)")
            except TransportError as e:
                self.last_failure = self.clock()
                if events[0] > 0 or self.clock() - started >= SHORT_WATCH:
                    self._resumed(f"the watch broke off ({e})")  # it was healthy: at once, like a server close
                    continue
                await self._retry_watch(e)
            except (_ShortWatch, ApiError, ValueError, KeyError, TypeError) as e:
                await self._retry_watch(e)

    @property
    def blind(self) -> bool:
        """A list or watch failed and nothing has come since (no page, event or bookmark): changes
        may be going unseen. A caller that must not miss one for long (a worker's cancels) reads
        for itself meanwhile."""
        return self.last_failure >= 0 and self.last_contact <= self.last_failure

    async def _retry_watch(self, cause: Exception) -> None:
        self.last_failure = self.clock()
        delay = self.backoff.next()
        logger.info("watching %s failed (%r); resuming in %.1f s", self.name, cause, delay)
        await self.sleep(delay)
        self._resumed(f"after {cause!r}")

    def _resumed(self, why: str) -> None:
        self.resumes += 1
        INFORMER_RESUMES.labels(self.name).inc()
        logger.debug("watch of %s resumes from %s: %s", self.name, self.resource_version, why)

    async def _relist_after(self, why: str) -> None:
        """A 410: list again, at once if nothing failed for a while, else after a backoff. It counts as
        a failure either way, so a 410 straight after each list does not re-list without pause."""
        self.last_failure = self.clock()
        fresh = self.backoff.fresh
        delay = self.backoff.next()
        if fresh:
            delay = 0.0
        logger.info("listing %s again in %.1f s: %s", self.name, delay, why)
        self.resource_version = None
        if delay:
            await self.sleep(delay)

    async def _list(self) -> str:
        """Every object, page by page (one consistent snapshot), then the keys it held."""
        if self.lists:
            INFORMER_RELISTS.labels(self.name).inc()
        seen: set[Key] = set()
        token: str | None = None
        limit = min(self.page, FIRST_PAGE) if self.page_bytes else self.page
        while True:
            params = {**self.params, "limit": str(limit), **({"continue": token} if token else {})}
            try:
                listing, size = await self.source.get_sized(self.path, params=params)
            except ApiError as e:
                if e.status_code == 410:
                    raise Gone() from e
                raise
            self.last_contact = self.clock()
            items = listing.get("items") or []
            for i, obj in enumerate(items):
                change = Change("ADDED", obj, listed=True)
                seen.add(change.key)
                self._deliver(change)
                if i % 256 == 255:
                    await asyncio.sleep(0)  # thousands of objects: let the rest of the process in
            token = listing["metadata"].get("continue")
            if self.page_bytes:
                limit = next_page(limit, len(items), size, self.page_bytes, self.page)
            del listing["items"]  # let the page go before the next one is read
            if not token:
                self.lists += 1
                if self.on_listed is not None:
                    self.on_listed(seen)
                self.listed.set()
                return str(listing["metadata"]["resourceVersion"])

    async def _watch(self, rv: str, events: list[int]) -> None:
        low, high = self.watch_seconds
        stream = self.source.watch(
            self.path,
            rv,
            params=self.params,
            timeout_seconds=self.rng.randint(low, high),
            idle_seconds=self.idle_seconds,
        )
        try:
            async for event in stream:
                self.last_contact = self.clock()
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise ApiError(int(obj.get("code") or 500), str(obj.get("message", "watch error")), obj)
                self.resource_version = str(obj["metadata"]["resourceVersion"])
                events[0] += 1
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._deliver(Change(kind, obj))
        except ApiError as e:
            if e.status_code == 410:
                raise Gone() from e
            raise

    def _deliver(self, change: Change) -> None:
        """One object's change: whatever the handler raises concerns that object alone. An exception
        that escaped here once ended the operator's informer, and with it every namespace's runs."""
        try:
            self.on_change(change)
        except Exception as e:
            INFORMER_HANDLER_ERRORS.labels(self.name).inc()
            namespace, name = change.key
            logger.error("handling %s of %s/%s failed: %r", change.kind, namespace, name, e, exc_info=e)
            if self.on_error is not None:
                self.on_error(change, e)
