"""Step records archived outside the execution's status.

Every status write costs the apiserver time in proportion to the whole
object: decoding, JSON-patch application, schema coercion and validation
(``bench/README.md`` has the profile). A status holding every step record
therefore makes each write of a long run dearer than the last, and a run of
some thousands of steps outgrows what etcd stores (about 1.5 MiB).

So ``status.steps`` keeps only the most recent records. Older, final ones
(Completed or Failed) move, in order, into immutable ConfigMaps owned by the
execution, so the garbage collector deletes them with it, and
``status.journal`` lists them. The full history is the journal's records
followed by ``status.steps``. A key may appear more than once (a failed step
run again after it was archived); the last record of a key is the one that
counts.

A chunk is written before the status write that lists it. If that status write
never happens (the worker died or lost the run), the chunk is an orphan that
nothing reads, and it goes away with the execution.

The status window is small (``STATUS_STEPS``, 8 records) because every step's
write costs the apiserver in proportion to the whole object: on two cores 100
runs recorded 150 steps/s with 8 records in status, 92 with 16, 71 with 50
(``bench/README.md``). Small windows make many small chunks, so chunks are
merged like an LSM tree: ``FANOUT`` consecutive chunks of one level become
chunks of the next. Merged-away chunks are orphans (a worker may not delete
ConfigMaps); they go with the execution. So a merge is made only where it pays:
when its records fit in at most half as many chunks as it replaces
(``worthwhile``). Chunks that are full already (``CHUNK_BYTES``) would come out
as many as went in, one level up, to be rewritten again by the next level's
merge: every byte of a long run written once per level, every copy but the last
an orphan. ``status.journal`` then grows by one entry (~130 bytes) per chunk
that no merge can shrink, about 1,000 records each: a small share of what those
chunks hold in etcd. The merges that do pay still leave their inputs behind:
after 10 minutes at 1,231 steps/s, 9,700 of the namespace's 10,675 ConfigMaps
were level-0 chunks merged away (``bench/results/etcd_growth.md``), kept until
their run is deleted (its TTL).

A chunk is trusted only as what its writer wrote: ``status.journal`` (which only the holder and the
operator may write) keeps each chunk's SHA-256, and a resumed run or ``step_history`` refuses a
chunk whose content, or whose execution label, does not match. A user who may edit ConfigMaps can
delete a chunk and create another of the same name with forged outputs; replay would have taken
them for steps that ran.

With the Postgres step store (``_postgres.py``) chunks are rows of a table instead, keyed by the run's
uid: their ref's ``configMap`` is ``postgres:<chunk>`` (the CRD's field, kept: a ConfigMap's name has
no colon, so the two never mix) and ``load`` reads them from the store, with the same digest check.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from . import _protocol as api
from ._errors import JournalError, NotFoundError, StepStoreUnreachableError
from ._kube import Kube

DATA_KEY = "steps.json"
STATUS_STEPS = 8  # records kept in status.steps (KUBESTEP_STATUS_STEPS); older ones move to chunks
FANOUT = 16  # chunks of one level merged into one of the next
CHUNK_BYTES = 512 * 1024  # a ConfigMap holds at most 1 MiB
LOAD_CONCURRENCY = 8  # reads at once when a run with a long journal is resumed
POSTGRES_REF = "postgres:"  # a ref whose configMap starts so names a chunk in the Postgres store


class ChunkSource(Protocol):
    """Where chunks that are not ConfigMaps are read from (the Postgres store)."""

    async def chunk(self, uid: str, name: str) -> str | None:
        """The chunk's JSON as written, or None if there is none of that name for the run ``uid``."""
        ...


def _path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/configmaps" + (f"/{name}" if name else "")


def record_bytes(rec: dict[str, Any]) -> int:
    """A record's JSON bytes in a chunk (``archive`` writes compact JSON)."""
    return len(json.dumps(rec, separators=(",", ":")))


def _cuts(sizes: Iterable[int]) -> Iterator[int]:
    """Where ``chunks`` ends each chunk but the last, given the records' ``record_bytes``: a chunk
    is a JSON list (2 bytes, and a comma between records) of at most CHUNK_BYTES, or one record."""
    size = 2
    for i, n in enumerate(sizes):
        if i and size + n + 1 > CHUNK_BYTES:
            yield i
            size = 2
        size += n + 1


def chunks(records: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    start = 0
    for cut in _cuts(record_bytes(rec) for rec in records):
        yield records[start:cut]
        start = cut
    if records:
        yield records[start:]


def chunk_count(sizes: Iterable[int]) -> int:
    """How many chunks records of these ``record_bytes`` make (``chunks``), without writing them."""
    sizes = list(sizes)
    return (sum(1 for _ in _cuts(sizes)) + 1) if sizes else 0


def merge_candidates(refs: list[dict[str, Any]]) -> Iterator[tuple[int, int, int]]:
    """Every run of FANOUT consecutive chunks of one level, oldest first, as (first, end, level)."""
    for first in range(len(refs) - FANOUT + 1):
        level = refs[first].get("level", 0)
        if all(r.get("level", 0) == level for r in refs[first : first + FANOUT]):
            yield first, first + FANOUT, level


def worthwhile(replaced: int, sizes: Iterable[int]) -> bool:
    """Whether merging ``replaced`` chunks whose records have these ``record_bytes`` pays: they fit
    in at most half as many (see the module's docstring)."""
    return chunk_count(sizes) <= replaced // 2


async def archive(
    kube: Kube, execution: dict[str, Any], records: list[dict[str, Any]], level: int = 0
) -> list[dict[str, Any]]:
    """Writes ``records`` into new ConfigMaps; returns their ``status.journal`` entries, in order."""
    meta = execution["metadata"]
    refs = []
    for chunk in chunks(records):
        data = json.dumps(chunk, separators=(",", ":"))
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "immutable": True,
            "metadata": {
                "generateName": f"{meta['name'][:200]}-steps-",
                "namespace": meta["namespace"],
                "labels": {api.LABEL_EXECUTION_UID: meta["uid"]},
                "ownerReferences": [
                    {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": meta["name"], "uid": meta["uid"]}
                ],
            },
            "data": {DATA_KEY: data},
        }
        created = await kube.create(_path(meta["namespace"]), body)
        refs.append(
            {
                "configMap": created["metadata"]["name"],
                "steps": len(chunk),
                "sha256": digest(data),
                **({"level": level} if level else {}),
            }
        )
    return refs


def digest(data: str) -> str:
    return hashlib.sha256(data.encode()).hexdigest()


async def load(
    kube: Kube,
    namespace: str,
    refs: list[dict[str, Any]],
    owner_uid: str | None = None,
    source: ChunkSource | None = None,
) -> list[dict[str, Any]]:
    """The archived records listed by ``status.journal``, in order; a chunk that is not the one
    its writer recorded (digest, or the execution it names) is refused. Chunks in the Postgres
    store (``POSTGRES_REF``) are read from ``source``."""
    gate = asyncio.Semaphore(LOAD_CONCURRENCY)

    async def fetch(name: str) -> str:
        if name.startswith(POSTGRES_REF):
            if source is None or owner_uid is None:
                raise StepStoreUnreachableError(
                    f"journal chunk {name} is in the Postgres step store: set KUBESTEP_POSTGRES_DSN to read it"
                )
            async with gate:
                found = await source.chunk(owner_uid, name)
            if found is None:
                raise JournalError(f"journal chunk {name} is missing from the Postgres step store")
            return found
        try:
            async with gate:
                cm = await kube.get(_path(namespace, name))
        except NotFoundError:
            raise JournalError(f"journal ConfigMap {name} is missing") from None
        labels = (cm.get("metadata") or {}).get("labels") or {}
        if owner_uid is not None and labels.get(api.LABEL_EXECUTION_UID) != owner_uid:
            raise JournalError(f"journal ConfigMap {name} belongs to another execution")
        data: str = (cm.get("data") or {}).get(DATA_KEY) or "[]"
        return data

    async def one(ref: dict[str, Any]) -> list[dict[str, Any]]:
        name = ref["configMap"]
        data = await fetch(name)
        if ref.get("sha256") and digest(data) != ref["sha256"]:
            raise JournalError(
                f"journal chunk {name} is not the one the worker wrote (its SHA-256 differs "
                "from status.journal): it was replaced"
            )
        records: list[dict[str, Any]] = json.loads(data)
        if len(records) != ref["steps"]:
            raise JournalError(f"journal chunk {name} holds {len(records)} records, status.journal says {ref['steps']}")
        return records

    out: list[dict[str, Any]] = []
    for part in await asyncio.gather(*(one(r) for r in refs)):
        out += part
    return out


def history(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per key, in order of first appearance, the last record of each key winning."""
    out: list[dict[str, Any]] = []
    where: dict[str, int] = {}
    for rec in records:
        if rec["key"] in where:
            out[where[rec["key"]]] = rec
        else:
            where[rec["key"]] = len(out)
            out.append(rec)
    return out
