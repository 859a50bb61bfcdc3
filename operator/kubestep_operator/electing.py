"""Leader election on a ``coordination.k8s.io`` Lease: one operator replica acts, the others stand by.

client-go's ``leaderelection`` in small, because no Python library does it over asyncio (the
``kubernetes`` client's elector is synchronous and thread-based, kopf's peering cannot tell equal
replicas apart). The rules, as client-go's:

* A replica takes the Lease when nobody holds it, when it holds it already (a restarted container
  of the same pod), or when the record has not changed for ``leaseDurationSeconds`` **on this
  replica's own clock** (it never compares another machine's ``renewTime`` with its own time, so
  clock skew cannot make it take a live leader's Lease). Every write is conditional on the Lease's
  resourceVersion, so two standbys racing for an expired Lease cannot both win.
* The leader renews every ``retry_period``; if it cannot renew for ``renew_deadline`` (shorter than
  the lease), it stops acting before anyone else may take over, and the process exits so that its
  pod restarts as a standby.
* On a clean shutdown the leader releases the Lease (holder cleared), so a standby takes over
  within one retry period instead of one lease duration.

Acting twice is harmless anyway: every decision is written conditionally (resourceVersion or
``test`` guards) and is level-triggered, so a deposed leader's late write is refused or repeats
what the new leader writes. The election is about not doing the work twice, not about safety.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kubestep import _protocol as api
from kubestep._errors import ApiError, ConflictError, NotFoundError, TransportError
from kubestep._kube import Kube

logger = logging.getLogger("kubestep.operator")

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"


@dataclasses.dataclass(frozen=True)
class Timing:
    lease_seconds: float = 15.0  # a silent leader is replaced after this long
    renew_deadline: float = 10.0  # a leader that could not renew for this long steps down
    retry_period: float = 2.0  # how often standbys look and the leader renews


@dataclasses.dataclass
class Observed:
    """The last Lease record seen, and when (this replica's monotonic clock)."""

    record: tuple[Any, ...] = ()
    at: float = 0.0


def lease_spec(lease: dict[str, Any] | None) -> dict[str, Any]:
    return dict((lease or {}).get("spec") or {})


def takeover(
    spec: dict[str, Any], me: str, now_wall: dt.datetime, now_mono: float, seen: Observed, timing: Timing
) -> dict[str, Any] | None:
    """The Lease spec to write to become (or stay) the leader, or None while another replica holds a
    live Lease. Pure; ``seen`` is updated with the record read."""
    record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseTransitions"))
    if record != seen.record:
        seen.record, seen.at = record, now_mono
    holder = spec.get("holderIdentity") or ""
    # Never honour a longer lease than our own: anyone who can write the Lease could otherwise name a
    # holder with a duration of 68 years and keep every replica standing by (issue 17).
    duration = min(api.duration(spec.get("leaseDurationSeconds"), timing.lease_seconds) or 0.0, timing.lease_seconds)
    if holder and holder != me and now_mono < seen.at + duration:
        return None
    mine = holder == me
    return {
        "holderIdentity": me,
        "leaseDurationSeconds": max(1, round(timing.lease_seconds)),
        "acquireTime": spec.get("acquireTime") if mine and spec.get("acquireTime") else _micro(now_wall),
        "renewTime": _micro(now_wall),
        "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (0 if mine or not holder else 1),
    }


def released(spec: dict[str, Any], now_wall: dt.datetime) -> dict[str, Any]:
    """What a leader leaving cleanly writes: nobody holds the Lease, so a standby takes it at once."""
    return {**spec, "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _micro(now_wall)}


def _micro(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Elector:
    """Runs ``lead`` while this replica holds the Lease ``namespace/name``."""

    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, timing: Timing) -> None:
        self.kube, self.namespace, self.name, self.identity, self.timing = kube, namespace, name, identity, timing
        self._path = LEASES.format(ns=namespace)
        self._seen = Observed()
        self._lease: dict[str, Any] | None = None  # the Lease as we last wrote or read it
        self.leading = False
        self.became_leader_at: float | None = None

    async def _try(self) -> bool:
        """One attempt to acquire or renew; True if this replica holds the Lease now."""
        try:
            lease = await self.kube.get(f"{self._path}/{self.name}")
        except NotFoundError:
            lease = None
        spec = takeover(lease_spec(lease), self.identity, api.now(), time.monotonic(), self._seen, self.timing)
        if spec is None:
            self._lease = lease
            return False
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}
        if lease is None:
            self._lease = await self.kube.create(self._path, body)
        else:
            meta["resourceVersion"] = lease["metadata"]["resourceVersion"]
            self._lease = await self.kube.request("PUT", f"{self._path}/{self.name}", json_body=body)
        return True

    async def _attempt(self) -> bool:
        try:
            return await self._try()
        except (ConflictError, TransportError, ApiError) as e:
            if not isinstance(e, ConflictError):
                logger.warning("leader election: %s", e)
            return False

    async def run(self, lead: Callable[[], Awaitable[None]], stepped_down: Callable[[], None]) -> None:
        """Stand by until the Lease is ours, start ``lead()``, renew; call ``stepped_down`` if renewing
        fails for ``renew_deadline`` (the caller stops acting and exits)."""
        while not await self._attempt():
            await asyncio.sleep(self.timing.retry_period)
        self.leading, self.became_leader_at = True, time.monotonic()
        logger.info("leader election: %s leads (Lease %s/%s)", self.identity, self.namespace, self.name)
        await lead()
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.timing.retry_period)
            if await self._attempt():
                renewed = time.monotonic()
            elif time.monotonic() - renewed >= self.timing.renew_deadline or lease_spec(self._lease).get(
                "holderIdentity"
            ) not in (
                "",
                self.identity,
            ):  # could not renew in time, or another replica already holds the Lease: stop acting now
                self.leading = False
                logger.error(
                    "leader election: %s lost the Lease (not renewed for %g s, or held by %r); stepping down",
                    self.identity,
                    self.timing.renew_deadline,
                    lease_spec(self._lease).get("holderIdentity"),
                )
                stepped_down()
                return

    async def release(self) -> None:
        """Gives the Lease up on a clean shutdown, if this replica still holds it."""
        if not self.leading or self._lease is None:
            return
        self.leading = False
        spec = lease_spec(self._lease)
        if spec.get("holderIdentity") != self.identity:
            return
        body = {**self._lease, "spec": released(spec, api.now())}
        try:
            await self.kube.request("PUT", f"{self._path}/{self.name}", json_body=body)
        except (ConflictError, TransportError, ApiError) as e:
            logger.warning("leader election: could not release the Lease (%s); a standby waits it out", e)
