"""The worker's liveness Lease (coordination.k8s.io/v1).

The operator reads these to tell a worker that is gone or hung from one that
is merely busy in a long step: a run's holder is alive while its Lease is
renewed. The Lease also advertises which workflows the worker serves, so the
operator can say why a run stays Queued. In a cluster the Lease is owned by
the worker's Pod (``POD_UID``), so the garbage collector removes it with the pod.

The Lease is named from the worker's identity (``kubestep-worker-<identity>``), and only a Lease so
named counts for the operator. Two live processes must never share an identity: both would take the
other's runs for their own (a run "held by us that we are not running" is handed back at start-up),
and stopping one would delete the other's Lease. Each process marks the Lease with a random instance
id; one that finds the Lease of its identity still renewed by another instance refuses to start.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import socket
import uuid
from typing import Any

from .. import _protocol as api
from .._errors import ApiError, ConflictError, NotFoundError
from .._kube import Kube
from .._procs import pid_alive

logger = logging.getLogger("kubestep.worker")

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
ANNOTATION_INSTANCE = "kubestep.io/instance"
ANNOTATION_PROCESS = "kubestep.io/process"  # "pod:<uid>/<pid>" or "host:<name>/<pid>" of its holder


def previous_life(holder: str, me: str) -> bool:
    """Whether the process that wrote a Lease (``"pod:<uid>/<pid>"`` or ``"host:<name>/<pid>"``) is an
    earlier life of this one: the same pod (its containers run one at a time), or a process of this
    host that is gone (or has this very pid). Anything else may be alive elsewhere: it must be seen
    to stop renewing."""
    where, _, pid = holder.rpartition("/")
    mine, _, my_pid = me.rpartition("/")
    if not where or where != mine or not pid.isdigit():
        return False
    return where.startswith("pod:") or pid == my_pid or not pid_alive(int(pid))


class IdentityInUse(Exception):
    """Another live process already serves under this worker's identity."""


class WorkflowCollision(Exception):
    """Another live worker of the namespace serves one of this worker's workflow ids with other code."""


def collisions(
    ours: dict[str, str], leases: list[dict[str, Any]], me: str, now: dt.datetime, queue: str = ""
) -> list[str]:
    """Each workflow id that a live worker Lease other than ``me``'s, of the same queue, serves from
    other code: two modules that both define ``approval`` in one namespace take each other's runs,
    which then fail ReplayMismatch. The same code in another version (a rolling update) is no
    collision, and nor is a worker of another queue (runs name their queue: ``spec.queue``)."""
    found = []
    for lease in leases:
        meta, spec = lease.get("metadata") or {}, lease.get("spec") or {}
        expires = api.lease_expiry(lease, now)
        if meta.get("name") == api.LEASE_PREFIX + me or expires is None or expires <= now:
            continue
        if api.lease_queue(lease) != queue:
            continue
        for wid, source in sorted(api.lease_sources(lease).items()):
            if wid in ours and ours[wid] != source:
                found.append(
                    f"workflow {wid!r} is served here by {ours[wid]} and by {source} on worker "
                    f"{spec.get('holderIdentity')!r}"
                )
    return found


def micro_time(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class WorkerLease:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        worker: str,
        workflows: list[str],
        duration_seconds: int,
        pod_uid: str | None = None,
        sources: dict[str, str] | None = None,
        queue: str = "",
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.worker = worker
        self.name = api.LEASE_PREFIX + worker
        self.workflows = workflows
        self.duration = duration_seconds
        self.pod_uid = pod_uid
        self.sources = dict(sources or {})
        self.queue = queue
        self.instance = uuid.uuid4().hex
        self.process = f"pod:{pod_uid}/{os.getpid()}" if pod_uid else f"host:{socket.gethostname()}/{os.getpid()}"
        self._path = LEASES.format(ns=namespace)

    def _body(self, acquire: dt.datetime, renew: dt.datetime) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": self.name,
            "namespace": self.namespace,
            "labels": {api.LABEL_WORKER: "true"},
            "annotations": {
                api.ANNOTATION_WORKFLOWS: ",".join(self.workflows),
                api.ANNOTATION_SOURCES: json.dumps(self.sources, sort_keys=True, separators=(",", ":")),
                ANNOTATION_INSTANCE: self.instance,
                ANNOTATION_PROCESS: self.process,
                **({api.ANNOTATION_QUEUE: self.queue} if self.queue else {}),
            },
        }
        if self.pod_uid:
            meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": self.worker, "uid": self.pod_uid}]
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": self.worker,
                "leaseDurationSeconds": self.duration,
                "acquireTime": micro_time(acquire),
                "renewTime": micro_time(renew),
            },
        }

    async def acquire(self) -> None:
        """Creates the Lease, or takes over the one a previous life of this worker left (same name,
        e.g. a restarted container) once it is no longer renewed. A replace must name the version it
        replaces; a Lease deleted meanwhile is created again. Raises ``IdentityInUse`` when another
        live process renews the Lease of this identity, ``WorkflowCollision`` when another live worker
        of the namespace serves one of its workflow ids with other code."""
        listing = await self.kube.get(self._path, params={"labelSelector": f"{api.LABEL_WORKER}=true"})
        clash = collisions(self.sources, list(listing.get("items") or []), self.worker, api.now(), self.queue)
        if clash:
            raise WorkflowCollision(
                "; ".join(clash) + ". A run of such an id goes to whichever worker claims it first, and replay "
                "fails on the other's code: give the workflows distinct ids (@workflow(id=...)), serve them on "
                "separate queues (kubestep worker --queue, spec.queue), or run the two modules in separate "
                "namespaces (one namespace per trust domain)."
            )
        for _ in range(5):
            t = api.now()
            try:
                await self.kube.create(self._path, self._body(t, t))
                return
            except ConflictError:
                pass
            try:
                current = await self._wait_unless_renewed(await self.kube.get(f"{self._path}/{self.name}"))
                body = self._body(api.now(), api.now())
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                await self.kube.request("PUT", f"{self._path}/{self.name}", json_body=body)
                return
            except (ConflictError, NotFoundError):
                continue
        raise ConflictError(409, f"could not acquire lease {self.name}: it kept changing")

    async def _wait_unless_renewed(self, lease: dict[str, Any]) -> dict[str, Any]:
        """The Lease as it stands once no other instance renews it: at once if it is ours or ran
        out, else after watching it for what is left of its term (on this machine's clock, at most
        one duration). Raises ``IdentityInUse`` if another instance renews it meanwhile."""
        annotations = lease["metadata"].get("annotations") or {}
        if annotations.get(ANNOTATION_INSTANCE) in (None, self.instance):
            return lease  # ours, or written by a version that did not mark its instance
        if previous_life(str(annotations.get(ANNOTATION_PROCESS) or ""), self.process):
            return lease  # a restarted container of this pod, or a process of this host that is gone
        first = (lease.get("spec") or {}).get("renewTime")
        expires = api.lease_expiry(lease, api.now())
        if expires is None or expires <= api.now():
            return lease  # ran out: nobody renews it
        term = (expires - api.now()).total_seconds()
        loop = asyncio.get_running_loop()
        until = loop.time() + term + 1.0
        while loop.time() < until:
            await asyncio.sleep(min(1.0, max(0.05, term / 10)))
            lease = await self.kube.get(f"{self._path}/{self.name}")
            spec = lease.get("spec") or {}
            if spec.get("renewTime") != first:
                raise IdentityInUse(
                    f"another live worker already uses the identity {self.worker!r}: it renews the Lease "
                    f"{self.namespace}/{self.name} (renewed at {spec.get('renewTime')}). Give each worker a "
                    f"unique POD_NAME, or leave POD_NAME unset (a local worker is then named after its host "
                    f"and process id)."
                )
        return lease

    async def renew_forever(self) -> None:
        interval = max(self.duration / 3.0, 0.2)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.kube.merge_patch(f"{self._path}/{self.name}", {"spec": {"renewTime": micro_time(api.now())}})
            except NotFoundError:
                try:
                    await self.acquire()
                except Exception as e:  # never let the renewer die: retry next interval
                    logger.warning("lease re-acquisition failed: %r", e)
            except ApiError as e:
                logger.warning("lease renewal failed: %s", e)
            except Exception as e:  # network errors: keep trying; the operator judges by renewTime
                logger.warning("lease renewal failed: %r", e)

    async def release(self) -> None:
        try:
            await self.kube.delete(f"{self._path}/{self.name}")
        except NotFoundError:
            pass
