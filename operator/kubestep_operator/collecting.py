"""Collecting the step journal's StepBatches once no run needs them, so they never pile up in etcd.

Workers create StepBatches and never change or delete them (``kubestep._protocol.batches``); the
leader collects them. Every ``collect_seconds`` (15 s) it lists the batches of its scopes, metadata
only (``PartialObjectMetadataList``, paged): the labels say everything the rule needs. A batch is
garbage once every run in it is (``batches.garbage``), judged on what the operator's own informer
knows of each run (``Journals``: every run in scope, finished ones too, since the controller keeps
only unfinished runs). A run the informer does not know is gone only when that is certain: it was
seen deleted (a DELETED event, or missing from a re-list), or the informer heard from the apiserver
(a list page, an event, a bookmark) ``HEARD_AFTER`` seconds after the batch was created, so the run,
older than its batch, would have reached it. Otherwise the batch waits: a run created a moment ago
whose ADDED event is still on its way must not lose its records.

Deletes are grouped to keep API writes low: the batches one worker wrote within one epoch
(``kubestep.io/batch-worker``, ``kubestep.io/epoch``) go with ONE delete of the collection by those
labels, once all of them are garbage and the epoch ended ``SETTLE`` seconds ago. The delete lists at
the resourceVersion of the sweep's own list (``resourceVersionMatch=Exact``), so it deletes exactly
the batches the sweep judged, never one a worker with a slow clock created since under the same
labels. A garbage batch whose group is not all garbage goes alone once it is ``STRAGGLER`` seconds
old. A batch with a member label the rule cannot read is kept (a reader would still find it).

Missing RBAC (403) or a missing StepBatch CRD (404) is said once, at WARNING, and the sweeps go on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from kubestep import _protocol as api
from kubestep._errors import ApiError, NotFoundError, TransportError
from kubestep._informer import Informer
from kubestep._kube import Kube
from kubestep._protocol import batches as b

from . import measuring
from .watching import Scope

logger = logging.getLogger("kubestep.operator")

ACCEPT_LIST: Final = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
ACCEPT_ONE: Final = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
PAGE: Final = 500  # batches a list page holds at most (their metadata only)
SETTLE: Final = 60.0  # s after its epoch ended before a group that is all garbage goes
STRAGGLER: Final = 600.0  # s before a garbage batch goes alone
HEARD_AFTER: Final = 120.0  # s: see the module's docstring (clock skew and watch delay, generously)
TOMBSTONE: Final = 3600.0  # s a run seen deleted is remembered as gone
_DELETE_OPTIONS: Final = {"apiVersion": "v1", "kind": "DeleteOptions"}
_EPOCH = re.compile(r"\d{1,12}")


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = _Unknown()  # a run the view cannot speak for (yet)
Lookup = Callable[[str], "Mapping[str, Any] | _Unknown | None"]  # run uid -> status | None (gone) | UNKNOWN


def _journal_fields(status: Any) -> dict[str, Any]:
    """The fields of a run's status ``batches.garbage`` reads, and nothing else (kept per run)."""
    if not isinstance(status, dict):
        return {}
    return {k: status[k] for k in ("journalLsn", "journalFences", "attempt") if status.get(k) is not None}


@dataclasses.dataclass
class Journals:
    """What the collector knows of runs: per uid, the status fields the rule reads, for every run the
    informers deliver (finished ones too); and the uids of runs seen gone, for ``TOMBSTONE`` s."""

    known: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    uids: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)  # (namespace, name) -> uid
    gone: dict[str, float] = dataclasses.field(default_factory=dict)  # uid -> when seen gone (``clock``)
    clock: Callable[[], float] = time.monotonic

    def seen(self, kind: str, body: Mapping[str, Any]) -> None:
        """A run as the informer delivered it (``ADDED``, ``MODIFIED``, ``DELETED``)."""
        meta = body.get("metadata") or {}
        uid, key = meta.get("uid"), (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if not isinstance(uid, str) or not uid:
            return
        if kind == "DELETED":
            self._gone(key, uid)
            return
        before = self.uids.get(key)
        if before is not None and before != uid:
            self._gone(key, before)  # a new run under that name: the old one was deleted
        self.uids[key] = uid
        self.known[uid] = _journal_fields(body.get("status"))

    def listed(self, accept: Callable[[str], bool], present: set[tuple[str, str]]) -> None:
        """After a (re-)list of a scope: runs it did not hold were deleted while the watch was down."""
        for key, uid in [(k, u) for k, u in self.uids.items() if accept(k[0]) and k not in present]:
            self._gone(key, uid)

    def _gone(self, key: tuple[str, str], uid: str) -> None:
        self.known.pop(uid, None)
        if self.uids.get(key) == uid:
            del self.uids[key]
        self.gone[uid] = self.clock()

    def prune(self) -> None:
        """Forgets runs gone for longer than ``TOMBSTONE``: by then their batches went, or the
        informer's contact speaks for them (``HEARD_AFTER``)."""
        limit = self.clock() - TOMBSTONE
        for uid in [u for u, at in self.gone.items() if at < limit]:
            del self.gone[uid]

    def lookup(self, created: float | None, heard: float) -> Lookup:
        """Run uid -> its status, None if gone, UNKNOWN if the view cannot tell, for a batch created
        at ``created`` (unix s), the informer of its scope having last heard from the apiserver at
        ``heard`` (unix s)."""

        def status_of(uid: str) -> Mapping[str, Any] | _Unknown | None:
            found = self.known.get(uid)
            if found is not None:
                return found
            if uid in self.gone:
                return None
            if created is not None and heard >= created + HEARD_AFTER:
                return None  # older than its batch, it would have been listed or watched by now
            return UNKNOWN

        return status_of


def verdict(labels: Mapping[str, str], status_of: Lookup) -> bool | None:
    """Is a batch garbage, from its labels: True once no run in it needs it (``batches.garbage``),
    False while one does, None while a run in it is unknown. A member label the rule cannot read
    keeps the batch (it may hold records a reader would count)."""
    found = b.members(labels)
    if len(found) != sum(1 for k in labels if k.startswith(b.MEMBER_PREFIX)):
        return False
    undecided = False
    for member in found:
        status = status_of(member.uid)
        if isinstance(status, _Unknown):
            undecided = True
        elif not b.garbage(member, status):
            return False
    return None if undecided else True


def epoch_of(value: str | None) -> int | None:
    return int(value) if value is not None and _EPOCH.fullmatch(value) else None


@dataclasses.dataclass(frozen=True)
class Seen:
    """A StepBatch as a sweep saw it (its metadata), and the verdict on it."""

    namespace: str
    name: str
    uid: str
    worker: str | None  # the kubestep.io/batch-worker label, as written
    epoch: str | None  # the kubestep.io/epoch label, as written
    created: float | None  # metadata.creationTimestamp, unix s
    garbage: bool | None

    @property
    def born(self) -> float | None:
        """When it was written: its epoch's start, else its creation."""
        epoch = epoch_of(self.epoch)
        return epoch * b.EPOCH_SECONDS if epoch is not None else self.created


@dataclasses.dataclass(frozen=True)
class Group:
    """The batches one worker wrote in one epoch in one namespace: deleted together."""

    namespace: str
    worker: str
    epoch: str
    names: tuple[str, ...]

    @property
    def selector(self) -> str:
        return f"{b.LABEL_BATCH_WORKER}={self.worker},{b.LABEL_EPOCH}={self.epoch}"


@dataclasses.dataclass(frozen=True)
class Plan:
    groups: list[Group]  # each one DELETE of the collection
    singles: list[Seen]  # each one DELETE of the batch

    def __len__(self) -> int:
        return sum(len(g.names) for g in self.groups) + len(self.singles)


def plan(batches: Iterable[Seen], now: float, *, settle: float = SETTLE, straggler: float = STRAGGLER) -> Plan:
    """What to delete, ``now`` (unix s): each (namespace, worker, epoch) group whose batches are all
    garbage and whose epoch ended ``settle`` s ago, with one request; any other garbage batch alone,
    once it is ``straggler`` s old. Pure."""
    grouped: dict[tuple[str, str, str], list[Seen]] = {}
    loose: list[Seen] = []
    for s in batches:
        if s.worker and epoch_of(s.epoch) is not None:
            assert s.epoch is not None
            grouped.setdefault((s.namespace, s.worker, s.epoch), []).append(s)
        else:
            loose.append(s)
    groups: list[Group] = []
    for (namespace, worker, epoch), members in grouped.items():
        ended = (int(epoch) + 1) * b.EPOCH_SECONDS
        if all(m.garbage is True for m in members) and ended < now - settle:
            groups.append(Group(namespace, worker, epoch, tuple(sorted(m.name for m in members))))
        else:
            loose += members
    singles = [s for s in loose if s.garbage is True and (born := s.born) is not None and born + straggler < now]
    return Plan(groups, singles)


def _created(meta: Mapping[str, Any]) -> float | None:
    try:
        t = api.parse_time(meta.get("creationTimestamp"))
    except (TypeError, ValueError):
        return None
    return t.timestamp() if t is not None else None


def _heard(informer: Informer) -> float:
    """When the informer last heard from the apiserver, as unix time."""
    return time.time() - (time.monotonic() - informer.last_contact)


class Collector:
    """The sweeps. Only the acting replica runs them (``Controller.start``, after the election)."""

    def __init__(
        self,
        kube: Kube,
        scopes: list[Scope],
        journals: Journals,
        informers: Mapping[Scope, Informer],
        interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kube, self.scopes, self.journals, self.informers = kube, scopes, journals, informers
        self.interval, self.clock = interval, clock
        self._said: set[str] = set()  # trouble already logged at WARNING (until a sweep succeeds)

    async def run(self) -> None:
        """Sweeps every ``interval`` s, for ever; a failed sweep is logged and the next one tries."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep()
            except Exception:  # a bug must not end the loop (the probe would fail on it)
                logger.exception("collecting StepBatches failed; again in %g s", self.interval)

    async def sweep(self) -> int:
        """One sweep over every scope; returns how many batches it deleted."""
        self.journals.prune()
        collected = 0
        for scope in self.scopes:
            informer = self.informers[scope]
            if not informer.listed.is_set():
                continue  # nothing is known of its runs yet: every batch would look orphaned
            listing = await self._list(scope, informer)
            if listing is None:
                continue
            seen, rv = listing
            todo = plan(seen, self.clock())
            logger.debug(
                "StepBatches in %s: %d seen, %d garbage, %d undecided; %d to delete in %d requests",
                scope.namespace or "every namespace",
                len(seen),
                sum(1 for s in seen if s.garbage is True),
                sum(1 for s in seen if s.garbage is None),
                len(todo),
                len(todo.groups) + len(todo.singles),
            )
            for group in todo.groups:
                collected += await self._delete_group(group, rv)
            for single in todo.singles:
                collected += await self._delete_one(single)
        if collected:
            measuring.BATCHES_COLLECTED.inc(collected)
            logger.info("collected %d StepBatches no run needs any more", collected)
        return collected

    async def _list(self, scope: Scope, informer: Informer) -> tuple[list[Seen], str] | None:
        path = b.batch_path(scope.namespace) if scope.namespace else f"/apis/{api.GROUP}/{api.VERSION}/{b.BATCH_PLURAL}"
        where = scope.namespace or "every namespace"
        out: list[Seen] = []
        rv: str | None = None
        params: dict[str, Any] = {"limit": PAGE}
        while True:
            try:
                page = await self.kube.request("GET", path, params=params, accept=ACCEPT_LIST)
            except (ApiError, TransportError) as e:
                self._trouble(e, f"listing StepBatches in {where}", f"list {where}")
                return None
            meta = page.get("metadata") or {}
            rv = rv or str(meta.get("resourceVersion") or "")
            heard = _heard(informer)  # read per page: the informer keeps listening meanwhile
            for item in page.get("items") or []:
                s = self._judge(scope, item, heard)
                if s is not None:
                    out.append(s)
            token = meta.get("continue")
            if not token:
                self._cleared(f"list {where}")
                return out, rv
            params = {**params, "continue": token}
            await asyncio.sleep(0)

    def _judge(self, scope: Scope, item: Mapping[str, Any], heard: float) -> Seen | None:
        meta = item.get("metadata") or {}
        namespace, name, uid = meta.get("namespace"), meta.get("name"), meta.get("uid")
        if not (isinstance(namespace, str) and isinstance(name, str) and isinstance(uid, str)):
            return None
        if not scope.accept(namespace):
            return None  # not ours: another scope's, or no scope's
        labels = meta.get("labels") or {}
        if not isinstance(labels, dict):
            return None
        created = _created(meta)
        return Seen(
            namespace,
            name,
            uid,
            labels.get(b.LABEL_BATCH_WORKER),
            labels.get(b.LABEL_EPOCH),
            created,
            verdict(labels, self.journals.lookup(created, heard)),
        )

    async def _delete_group(self, group: Group, rv: str) -> int:
        # At the list's own resourceVersion: exactly the batches this sweep judged, none created since.
        # The DeleteOptions go in the body: without one the apiserver reads them from the query too,
        # and takes its resourceVersion for a precondition on every batch (409 on each).
        params = {"labelSelector": group.selector, "resourceVersion": rv, "resourceVersionMatch": "Exact"}
        path = b.batch_path(group.namespace)
        try:
            answer = await self.kube.request(
                "DELETE", path, params=params, json_body=_DELETE_OPTIONS, accept=ACCEPT_LIST
            )
        except (ApiError, TransportError) as e:
            if isinstance(e, ApiError) and e.status_code == 410:
                logger.debug("StepBatches of %s: the list is too old to delete by; next sweep", group.selector)
                return 0
            self._trouble(e, f"deleting StepBatches ({group.selector}) in {group.namespace}", "delete")
            return 0
        self._cleared("delete")
        items = answer.get("items") if isinstance(answer, dict) else None
        return len(items) if isinstance(items, list) else len(group.names)

    async def _delete_one(self, s: Seen) -> int:
        options = {**_DELETE_OPTIONS, "preconditions": {"uid": s.uid}}
        try:
            await self.kube.request("DELETE", b.batch_path(s.namespace, s.name), json_body=options, accept=ACCEPT_ONE)
        except NotFoundError:
            return 0  # already gone
        except (ApiError, TransportError) as e:
            if isinstance(e, ApiError) and e.status_code == 409:
                return 0  # another object under that name now: not the one judged
            self._trouble(e, f"deleting StepBatch {s.namespace}/{s.name}", "delete")
            return 0
        self._cleared("delete")
        return 1

    def _trouble(self, e: Exception, what: str, key: str) -> None:
        """Said once at WARNING per ``key`` and cause (a missing CRD, missing RBAC), then at DEBUG
        until the trouble clears (``_cleared``)."""
        status = e.status_code if isinstance(e, ApiError) else None
        why = _WHY.get(status or 0, "")
        said = f"{key} {status or type(e).__name__}"
        if said in self._said:
            logger.debug("%s failed: %s", what, e)
            return
        self._said.add(said)
        logger.warning("%s failed (%s)%s; the collector tries again every %g s", what, e, why, self.interval)

    def _cleared(self, key: str) -> None:
        self._said = {k for k in self._said if not k.startswith(key + " ")}


_WHY: Final = {
    404: ": is the StepBatch CRD installed (crds/stepbatches.kubestep.io.yaml)?",
    403: ": the operator's RBAC must allow get, list, delete and deletecollection of stepbatches",
}
