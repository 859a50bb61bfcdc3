"""Step stores: where a worker makes its runs' step records durable, and where archived records go.

The worker's group commit (``_worker/committing.py``) queues, packs and flushes; what it writes to is
a ``StepStore``. The claim reads a run's entries back from it, the client folds them into a run's
history, and a run's older records are archived through it (``status.journal`` lists the chunks).
What a record is and which entries count stays the status contract's (``_protocol/batches.py``):
every store hands back ``batches.Entry`` (attempt, lsn, record, worker), so fencing and the
gap-free rule are the same whatever the store.

* ``KubeStore`` (``KUBESTEP_STEP_STORE=batch``, and the archive of ``status``): StepBatch objects
  and journal ConfigMaps, the code of ``_batches.py`` and ``_journal.py`` unchanged.
* ``PostgresStore`` (``_postgres.py``, ``KUBESTEP_STEP_STORE=postgres``): one row per record, chunks in
  a table, and a run's final object kept after the run is deleted.

The run's control state (spec, phase, cancellation, deadlines, the status checkpoint) stays in the
custom resource with every store.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from . import _batches
from . import _journal as journal
from ._errors import NotFoundError
from ._kube import Kube
from ._protocol import batches as b

# ``runs`` as group commit hands them over: [{name, uid, attempt, entries: [{lsn, record}]}], one per
# (run, attempt), entries in lsn order.
Runs = Sequence[dict[str, Any]]


class StepStore(Protocol):
    """What the worker, the claim and the client need of a step store."""

    kind: str  # "batch" or "postgres": what the worker logs and the metrics say

    def prepare(self, runs: Runs) -> Callable[[], Awaitable[None]]:
        """One write of ``runs``, to be awaited and, after a transient failure, awaited again: it
        must be idempotent (a retry whose first answer was lost finds its own write there)."""
        ...

    async def entries(self, namespace: str, uid: str) -> list[b.Entry]:
        """Every entry the store holds for the run ``uid`` (``batches.counted`` says which count)."""
        ...

    async def archive(
        self, execution: dict[str, Any], records: list[dict[str, Any]], level: int
    ) -> list[dict[str, Any]]:
        """Writes ``records`` as chunks; returns their ``status.journal`` refs, in order."""
        ...

    async def load(self, namespace: str, refs: list[dict[str, Any]], uid: str | None) -> list[dict[str, Any]]:
        """The archived records ``refs`` list, in order; a chunk not as its writer wrote it is refused."""
        ...

    async def ended(self, execution: dict[str, Any]) -> None:
        """The run ``execution`` (as its final status write returned it) has finished."""
        ...

    async def finished(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The final object of a finished run of that name that is no longer on the apiserver, if the
        store keeps them (``ended``), else None."""
        ...

    async def sweep(self, namespace: str, before: dt.datetime) -> int:
        """Deletes the finished runs the store keeps (``ended``) of ``namespace`` that ended before
        ``before``; how many (the worker's ``KUBESTEP_POSTGRES_RETENTION_DAYS``)."""
        ...

    async def start(self) -> None:
        """Called once when the worker starts (the Postgres store creates its schema)."""
        ...

    async def close(self) -> None: ...


_NOT_IN_NAME = re.compile(r"[^a-z0-9.-]+")


class KubeStore:
    """StepBatches for the records, ConfigMaps for the archive (the default, inside Kubernetes)."""

    kind = "batch"

    def __init__(
        self, kube: Kube, namespace: str = "", worker: str = "", clock: Callable[[], float] = time.time
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.worker = worker
        self.clock = clock
        # Names are never reused, so a batch found under its name is the one this writer wrote.
        stem = _NOT_IN_NAME.sub("-", worker.lower()).strip("-.")[:200] or "worker"
        self._stem = f"{stem}-{secrets.token_hex(3)}"
        self._counter = 0

    def prepare(self, runs: Runs) -> Callable[[], Awaitable[None]]:
        # The name is fixed here, once: a retry creates the same object and finds it (AlreadyExists).
        self._counter += 1
        batch = _batches.body(
            self.namespace, f"{self._stem}-{self._counter}", self.worker, int(self.clock() // b.EPOCH_SECONDS), runs
        )
        return lambda: _batches.write(self.kube, batch)

    async def entries(self, namespace: str, uid: str) -> list[b.Entry]:
        try:
            return await _batches.entries(self.kube, namespace, uid)
        except NotFoundError:
            return []  # no StepBatch CRD (an install from before the step journal): nothing in one

    async def archive(
        self, execution: dict[str, Any], records: list[dict[str, Any]], level: int
    ) -> list[dict[str, Any]]:
        return await journal.archive(self.kube, execution, records, level)

    async def load(self, namespace: str, refs: list[dict[str, Any]], uid: str | None) -> list[dict[str, Any]]:
        return await journal.load(self.kube, namespace, refs, uid)

    async def ended(self, execution: dict[str, Any]) -> None:
        return None  # the object is the record: retention deletes its history with it

    async def finished(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    async def sweep(self, namespace: str, before: dt.datetime) -> int:
        return 0  # finished runs are objects: the operator deletes them (ttlSecondsAfterFinished)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
