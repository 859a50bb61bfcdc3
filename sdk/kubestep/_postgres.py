"""The Postgres step store (``KUBESTEP_STEP_STORE=postgres``): step records, archived chunks and
finished runs in PostgreSQL, for installations whose etcd should not carry every step.

The run's control state stays in its custom resource (spec, phase, cancellation, deadlines and the
status checkpoint: counts, ``currentStep``, ``journalLsn``, ``journalFences``), so cancel, timeouts,
``kubectl wait`` and the operator are unchanged; the operator never talks to Postgres.

* **Records**: one row per record, ``(uid, attempt, lsn)`` the key, appended by the worker's group
  commit with one statement per flush for every run in it (``unnest`` of arrays) and ``ON CONFLICT DO
  NOTHING``: a retry whose first answer was lost finds its rows there. Rows carry the attempt, the
  lsn and the writer, so ``batches.counted`` and the claim's fences apply as to StepBatches.
* **Chunks**: the records a checkpoint moves out of status, keyed ``(uid, chunk)``; ``status.journal``
  refs name them ``postgres:<chunk>`` with their SHA-256, which ``_journal.load`` checks as for a
  ConfigMap. No ConfigMap is written.
* **Runs**: when a worker ends a run (Completed, Failed, Cancelled) it keeps the final object here and
  drops the run's record rows (its status holds every record by then) and the chunks its journal
  no longer lists (merged away). After retention deletes the object, ``kubestep get``/``steps`` (a
  client with the DSN) still show the run from this table; ``kubectl`` no longer does.

An unreachable server, or one refusing connections (restarting, out of connections, a rotated
password), raises ``TransportError``, which the worker rides out like an apiserver outage
(``letting_go.Outage``) and then hands the run back: a store outage pauses runs, never fails them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime as dt
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from . import _journal as journal
from ._errors import TransportError
from ._kube import Kube
from ._protocol import batches as b
from ._stores import KubeStore, Runs

logger = logging.getLogger("kubestep.postgres")

POOL_SIZE = 8  # connections at most: a flush, the claims' reads, archives and endings at once
COMMAND_SECONDS = 30.0  # a statement that takes longer is a hung server: retried like an outage
SCHEMA_LOCK = 0x6B75_6265_7374_6570  # "kubestep": one schema creation at a time across workers
SWEEP_LOCK = 0x6B75_6265  # "kube", with the namespace's hash: one retention sweep of a namespace at a time
SWEEP_BATCH = 500  # finished runs deleted per statement: short transactions, whatever the backlog

SCHEMA = """
CREATE TABLE IF NOT EXISTS kubestep_steps (
    uid       text   NOT NULL,
    attempt   bigint NOT NULL,
    lsn       bigint NOT NULL,
    namespace text   NOT NULL,
    name      text   NOT NULL,
    worker    text   NOT NULL,
    record    text   NOT NULL,  -- JSON as the worker encoded it (jsonb would refuse a \\u0000 in an output)
    PRIMARY KEY (uid, attempt, lsn)
);
CREATE TABLE IF NOT EXISTS kubestep_chunks (
    uid   text NOT NULL,
    chunk text NOT NULL,
    data  text NOT NULL,
    PRIMARY KEY (uid, chunk)
);
CREATE TABLE IF NOT EXISTS kubestep_runs (
    uid         text        PRIMARY KEY,
    namespace   text        NOT NULL,
    name        text        NOT NULL,
    finished_at timestamptz NOT NULL,
    object      text        NOT NULL
);
CREATE INDEX IF NOT EXISTS kubestep_runs_by_name ON kubestep_runs (namespace, name, finished_at DESC);
"""

INSERT_STEPS = """
INSERT INTO kubestep_steps (uid, attempt, lsn, namespace, name, worker, record)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[])
ON CONFLICT DO NOTHING
"""

# Errors of the connection, not of the statement: worth another try once the server answers again.
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08, and a connection that died under a statement
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutting down, starting up
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # class 28: a password being rotated
    # A connection asyncpg itself no longer knows the state of (a statement cut short: ``_use``);
    # the pool drops it on release, and the next try takes another.
    asyncpg.exceptions.InternalClientError,
)


_T = TypeVar("_T")


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def rows(namespace: str, worker: str, runs: Runs) -> tuple[list[Any], ...]:
    """``runs`` as the seven columns ``INSERT_STEPS`` unnests, one element per record."""
    cols: tuple[list[Any], ...] = ([], [], [], [], [], [], [])
    for run in runs:
        for e in run["entries"]:
            for col, value in zip(
                cols,
                (run["uid"], int(run["attempt"]), int(e["lsn"]), namespace, run["name"], worker, _json(e["record"])),
                strict=True,
            ):
                col.append(value)
    return cols


def finished_at(execution: dict[str, Any]) -> dt.datetime:
    raw = (execution.get("status") or {}).get("finishedAt")
    try:
        return dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00")) if raw else dt.datetime.now(dt.UTC)
    except ValueError:
        return dt.datetime.now(dt.UTC)


@dataclasses.dataclass
class _Pools:
    """A store's connection pool, made when first needed, shared with its ``reader`` views."""

    pool: asyncpg.Pool | None = None
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)  # the first users make one pool


class PostgresStore:
    """A ``StepStore`` on PostgreSQL; ``kube`` still serves what runs recorded before (StepBatches,
    ConfigMap chunks), so a fleet moved from ``batch`` to ``postgres`` loses no history."""

    kind = "postgres"

    def __init__(self, dsn: str, kube: Kube, namespace: str = "", worker: str = "") -> None:
        self.dsn = dsn
        self.namespace = namespace
        self.worker = worker
        self._kube_store = KubeStore(kube, namespace, worker)
        self._pools = _Pools()
        self._view = False  # a ``reader``: closing it leaves the pool to its store
        self.writes = 0

    def reader(self, kube: Kube) -> PostgresStore:
        """This store over another apiserver client, sharing this one's connection pool: ``kubestep
        server`` reads each caller's runs with the caller's token and the server's one pool. Closing
        the reader leaves the pool open."""
        view = copy.copy(self)
        view._kube_store = KubeStore(kube, self.namespace, self.worker)
        view._view = True
        return view

    # ----- connections ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; what goes wrong with the server comes out as ``TransportError``."""
        try:
            pools = self._pools
            async with pools.lock:
                if pools.pool is None:
                    # min_size 0: no connection is opened before one is needed, and an idle one is
                    # closed after max_inactive_connection_lifetime: an idle worker holds nothing.
                    pools.pool = await asyncpg.create_pool(
                        self.dsn,
                        min_size=0,
                        max_size=POOL_SIZE,
                        command_timeout=COMMAND_SECONDS,
                        max_inactive_connection_lifetime=60.0,
                    )
                pool = pools.pool
            async with pool.acquire(timeout=COMMAND_SECONDS) as conn:
                yield conn
        except _TRANSIENT as exc:
            raise TransportError(f"the Postgres step store: {type(exc).__name__}: {exc}") from exc

    async def _use(self, op: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
        """``op`` on a pooled connection, run to its end even if the caller is cancelled.

        asyncpg leaves a connection whose statement was cancelled mid-flight in a state that trips
        its next user (``InternalClientError: cannot switch to state 12; another operation (2) is in
        progress``, MagicStack/asyncpg#1069), and the pool hands it out again. An ending preempts a
        checkpoint mid-archive, so the chaos soak met it: the next flush on that connection failed a
        run with WorkerError. Shielded, the statement finishes and the connection goes back clean;
        what it wrote is harmless (an archive's chunk rows stay unlisted and go when the run ends;
        a flush's rows are what its retry would write)."""

        async def whole() -> _T:
            async with self._connection() as conn:
                return await op(conn)

        task = asyncio.ensure_future(whole())
        task.add_done_callback(_retrieved)  # its error, once nobody waits for it any more
        return await asyncio.shield(task)

    async def start(self) -> None:
        """Creates the tables if they are not there (idempotent: every worker does it at start-up,
        one at a time under an advisory lock, so two starting at once never race on the catalog)."""
        try:
            async with self._connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
                await conn.execute(SCHEMA)
        except (asyncpg.PostgresError, asyncpg.exceptions.ClientConfigurationError, ValueError) as e:
            # Not an outage (those come out as TransportError, and the worker waits them out): a DSN
            # that is not one, a database that does not exist, a role that may not create tables.
            raise SystemExit(
                f"kubestep worker: the Postgres step store cannot be used: {type(e).__name__}: {e}"
            ) from None

    async def close(self) -> None:
        if self._view or self._pools.pool is None:
            return
        pool, self._pools.pool = self._pools.pool, None
        await pool.close()

    # ----- records ----------------------------------------------------------------------------

    def prepare(self, runs: Runs) -> Callable[[], Awaitable[None]]:
        cols = rows(self.namespace, self.worker, runs)

        async def write() -> None:
            await self._use(lambda conn: conn.execute(INSERT_STEPS, *cols))
            self.writes += 1

        return write

    async def entries(self, namespace: str, uid: str) -> list[b.Entry]:
        """The run's rows, and its StepBatch entries (written before the fleet moved to Postgres)."""
        found = await self._use(
            lambda conn: conn.fetch(
                "SELECT attempt, lsn, worker, record FROM kubestep_steps WHERE uid = $1 AND namespace = $2",
                uid,
                namespace,
            )
        )
        out = [b.Entry(int(r["attempt"]), int(r["lsn"]), json.loads(r["record"]), str(r["worker"])) for r in found]
        return out + await self._kube_store.entries(namespace, uid)

    # ----- chunks -----------------------------------------------------------------------------

    async def archive(
        self, execution: dict[str, Any], records: list[dict[str, Any]], level: int
    ) -> list[dict[str, Any]]:
        uid = execution["metadata"]["uid"]
        refs, values = [], []
        for chunk in journal.chunks(records):
            data = _json(chunk)
            name = journal.POSTGRES_REF + secrets.token_hex(8)
            values.append((uid, name, data))
            refs.append(
                {
                    "configMap": name,
                    "steps": len(chunk),
                    "sha256": journal.digest(data),
                    **({"level": level} if level else {}),
                }
            )
        # A retry writes under new names: the lost first try's rows are orphans, dropped when the run ends.
        await self._use(
            lambda conn: conn.executemany(
                "INSERT INTO kubestep_chunks (uid, chunk, data) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", values
            )
        )
        return refs

    async def chunk(self, uid: str, name: str) -> str | None:
        data: str | None = await self._use(
            lambda conn: conn.fetchval("SELECT data FROM kubestep_chunks WHERE uid = $1 AND chunk = $2", uid, name)
        )
        return data

    async def load(self, namespace: str, refs: list[dict[str, Any]], uid: str | None) -> list[dict[str, Any]]:
        return await journal.load(self._kube_store.kube, namespace, refs, uid, source=self)

    # ----- finished runs ----------------------------------------------------------------------

    async def ended(self, execution: dict[str, Any]) -> None:
        """Keeps the run's final object, and drops what its status now holds itself: its record rows
        (every record is in status or a listed chunk once its holder ended it) and unlisted chunks."""
        meta = execution["metadata"]
        listed = [r["configMap"] for r in (execution.get("status") or {}).get("journal") or []]

        async def keep(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO kubestep_runs (uid, namespace, name, finished_at, object) "
                    "VALUES ($1, $2, $3, $4, $5) "
                    "ON CONFLICT (uid) DO UPDATE SET finished_at = excluded.finished_at, object = excluded.object",
                    meta["uid"],
                    meta["namespace"],
                    meta["name"],
                    finished_at(execution),
                    _json(execution),
                )
                await conn.execute("DELETE FROM kubestep_steps WHERE uid = $1", meta["uid"])
                await conn.execute(
                    "DELETE FROM kubestep_chunks WHERE uid = $1 AND NOT (chunk = ANY($2::text[]))", meta["uid"], listed
                )

        await self._use(keep)

    async def sweep(self, namespace: str, before: dt.datetime) -> int:
        """Deletes the finished runs of ``namespace`` that ended before ``before``, with their chunks
        and any record rows left, ``SWEEP_BATCH`` at a time; returns how many. The namespace's workers
        all sweep (``KUBESTEP_POSTGRES_RETENTION_DAYS``); an advisory lock lets one at a time do it,
        the others skip. Only what ended: a run's rows while it runs are never touched."""
        total = 0
        while True:
            async with self._connection() as conn, conn.transaction():
                if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1, hashtext($2))", SWEEP_LOCK, namespace):
                    return total  # another worker of the namespace sweeps it now
                uids = [
                    r["uid"]
                    for r in await conn.fetch(
                        "DELETE FROM kubestep_runs WHERE uid IN (SELECT uid FROM kubestep_runs "
                        "WHERE namespace = $1 AND finished_at < $2 LIMIT $3) RETURNING uid",
                        namespace,
                        before,
                        SWEEP_BATCH,
                    )
                ]
                if uids:
                    await conn.execute("DELETE FROM kubestep_chunks WHERE uid = ANY($1::text[])", uids)
                    await conn.execute("DELETE FROM kubestep_steps WHERE uid = ANY($1::text[])", uids)
            total += len(uids)
            if len(uids) < SWEEP_BATCH:
                return total

    async def finished(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The newest finished run of that name kept here (after its object was deleted), or None."""
        async with self._connection() as conn:
            raw = await conn.fetchval(
                "SELECT object FROM kubestep_runs WHERE namespace = $1 AND name = $2 ORDER BY finished_at DESC LIMIT 1",
                namespace,
                name,
            )
        return json.loads(raw) if raw is not None else None
