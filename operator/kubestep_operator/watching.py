"""List, then watch, one collection: how the operator learns of every execution and every worker Lease.

Why not kopf's watches and indexes, which the operator first used: kopf takes each event of each object
through its whole per-object handler machinery (about 2.5 ms of CPU per event on these machines), and
while it lists an indexed resource it keeps a readiness toggle per object, every change of which wakes
every object waiting for readiness: quadratic in the objects at start-up. Started on 1,000 runs that
cost 18 s of CPU before the first decision; on 10,000, more than ten minutes (issue 12). This is
client-go's informer reduced to what the operator needs: one list (paged), then one watch from the list's
resourceVersion with bookmarks, resumed when the server ends it and re-listed when it expires (410 Gone)
or fails; each event costs a JSON decode and a callback. kopf still runs the process around it: start-up,
clean-up, signals and the liveness endpoint.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import logging
import time
from collections.abc import Callable
from typing import Any

from kubestep._errors import ApiError, TransportError
from kubestep._kube import Kube

from . import measuring
from .writing import retry_delay

logger = logging.getLogger("kubestep.operator")

OnEvent = Callable[[str, dict[str, Any]], None]  # ("ADDED" | "MODIFIED" | "DELETED", object)
OnListed = Callable[["Scope", set[tuple[str, str]]], None]  # every (namespace, name) the latest list held


@dataclasses.dataclass(frozen=True)
class Scope:
    """Where an informer looks: one namespace, or every namespace whose name passes ``accept``."""

    namespace: str | None  # None: cluster-wide
    patterns: tuple[str, ...] = ()  # cluster-wide only: shell patterns a namespace must match (none: all)
    exclude: tuple[str, ...] = ()  # cluster-wide only: namespaces another scope covers

    def accept(self, namespace: str) -> bool:
        if self.namespace is not None:
            return namespace == self.namespace
        if namespace in self.exclude:
            return False
        return not self.patterns or any(fnmatch.fnmatchcase(namespace, p) for p in self.patterns)


def scopes(namespaces: list[str], all_namespaces: bool) -> list[Scope]:
    """One scope per named namespace (a namespaced Role suffices); shell patterns (``t-*``) need a
    cluster-wide list and watch, filtered here."""
    if all_namespaces:
        return [Scope(None)]
    exact = [n for n in namespaces if not any(c in n for c in "*?[")]
    patterns = tuple(n for n in namespaces if n not in exact)
    found = [Scope(n) for n in dict.fromkeys(exact)]
    if patterns:
        found.append(Scope(None, patterns, tuple(exact)))
    return found


FIRST_PAGE = 10


def next_page(limit: int, items: int, size: int, target: int, most: int) -> int:
    """How many objects the next list page may hold so that it weighs about ``target`` bytes, judged
    by the page just read (``items`` objects in ``size`` bytes): at least 1, at most ``most``, and
    at most four times the last limit (a page of small objects says little about the next)."""
    if items == 0 or size <= 0:
        return min(most, limit * 4)
    per_object = size / items
    return max(1, min(most, limit * 4, int(target / per_object)))


class _Expired(Exception):
    """The resourceVersion to resume from is gone (410): list again."""


@dataclasses.dataclass
class Informer:
    kube: Kube
    path: str  # the collection, e.g. /apis/kubestep.io/v1alpha1/namespaces/NS/workflowexecutions
    scope: Scope
    on_event: OnEvent
    on_listed: OnListed
    params: dict[str, str] = dataclasses.field(default_factory=dict)  # e.g. a labelSelector
    page: int = 500  # objects a list page holds at most
    # What a list page should weigh: the page size follows the objects' size, from a first page of
    # FIRST_PAGE objects. A run may carry an input of up to 1.5 MiB (etcd's limit), and 500 such runs
    # in one page once took a restarted operator past its memory limit. 0: fixed pages of ``page``.
    page_bytes: int = 4 << 20
    listed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    last_contact: float = dataclasses.field(default_factory=time.monotonic)  # a list, an event or a bookmark

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                rv = await self._list()
                self.listed.set()
                failures = 0
                while True:  # the server ends a watch after timeoutSeconds: resume where it left off
                    rv = await self._watch(rv)
            except asyncio.CancelledError:
                raise
            except _Expired:
                logger.info("watch of %s expired; listing again", self.path)
            except (ApiError, TransportError, ValueError, KeyError) as e:
                failures += 1
                delay = retry_delay(failures)
                logger.warning("watching %s failed (%r); listing again in %.1f s", self.path, e, delay)
                await asyncio.sleep(delay)

    async def _list(self) -> str:
        """Every object, page by page (one consistent snapshot), then the keys it held."""
        seen: set[tuple[str, str]] = set()
        token: str | None = None
        limit = min(self.page, FIRST_PAGE) if self.page_bytes else self.page
        while True:
            params = {**self.params, "limit": str(limit), **({"continue": token} if token else {})}
            try:
                listing, size = await self.kube.get_sized(self.path, params=params)
            except ApiError as e:
                if e.status_code == 410:  # the continue token outlived its snapshot
                    raise _Expired() from e
                raise
            self.last_contact = time.monotonic()
            for i, obj in enumerate(listing.get("items") or []):
                meta = obj["metadata"]
                if self.scope.accept(meta["namespace"]):
                    seen.add((meta["namespace"], meta["name"]))
                    self._deliver("ADDED", obj)
                if i % 256 == 255:
                    await asyncio.sleep(0)  # thousands of objects: let the writers and the scheduler in
            token = listing["metadata"].get("continue")
            if self.page_bytes:
                limit = next_page(limit, len(listing.get("items") or []), size, self.page_bytes, self.page)
            del listing["items"]  # let the page go before the next one is read
            if not token:
                self.on_listed(self.scope, seen)
                return str(listing["metadata"]["resourceVersion"])

    async def _watch(self, rv: str) -> str:
        async for event in self.kube.watch(self.path, rv, params=self.params):
            self.last_contact = time.monotonic()
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _Expired()
                raise ApiError(int(obj.get("code") or 500), str(obj.get("message", "watch error")), obj)
            rv = obj["metadata"]["resourceVersion"]
            if kind in ("ADDED", "MODIFIED", "DELETED") and self.scope.accept(obj["metadata"]["namespace"]):
                self._deliver(str(kind), obj)
        return rv

    def _deliver(self, kind: str, obj: dict[str, Any]) -> None:
        """One object's event: whatever it raises concerns that object alone. An exception that
        escaped here once ended the informer, and with it every namespace's runs (issue 17)."""
        try:
            self.on_event(kind, obj)
        except Exception as e:
            meta = obj.get("metadata") or {}
            measuring.OBJECT_ERRORS.labels("event").inc()
            logger.error(
                "handling %s of %s/%s failed: %r", kind, meta.get("namespace"), meta.get("name"), e, exc_info=e
            )
