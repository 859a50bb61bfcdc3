"""The Postgres step store (``_postgres.py``, ``KUBESTEP_STEP_STORE=postgres``) against a real
PostgreSQL server (Debian's, started as a local process: ``kubestep_dev.postgres``) and, for the
runs, the real control plane, operator and workers.

A missing PostgreSQL fails these tests, it never skips them: ``make test`` installs it."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from kubestep import KubestepClient
from kubestep import _protocol as api
from kubestep._errors import JournalError, NotFoundError
from kubestep._postgres import SWEEP_LOCK, PostgresStore
from kubestep._protocol import batches
from kubestep_dev.postgres import LocalPostgres

from .harness import E2E, completed_steps, until, until_phase

pytestmark = pytest.mark.skipif(E2E, reason="starts/stops worker processes and a database: local only")


@pytest.fixture(scope="module")
def postgres() -> Iterator[LocalPostgres]:
    server = LocalPostgres()
    server.start()
    yield server
    server.destroy()


@pytest.fixture
async def database(postgres: LocalPostgres) -> AsyncIterator[str]:
    """A database of its own for one test: its DSN."""
    if not postgres.running:
        postgres.start()  # a test that stopped it failed before starting it again
    name = f"t_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(postgres.dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    yield postgres.dsn.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
async def pg_client(
    control_plane: Any, run_namespace: str, operator: Any, database: str
) -> AsyncIterator[KubestepClient]:
    async with KubestepClient(
        namespace=run_namespace, kubeconfig=str(control_plane.kubeconfig), postgres_dsn=database
    ) as c:
        yield c


def store_env(dsn: str, **extra: str) -> dict[str, str]:
    return {"KUBESTEP_STEP_STORE": "postgres", "KUBESTEP_POSTGRES_DSN": dsn, **extra}


async def query(dsn: str, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


class NoBatches:
    """A Kube with no StepBatch CRD: the store's direct tests need no control plane."""

    async def get(self, *_: Any, **__: Any) -> Any:
        raise NotFoundError(404, "no StepBatch CRD")


def runs_of(uid: str, attempt: int, *lsns: int) -> list[dict[str, Any]]:
    return [
        {
            "name": "r",
            "uid": uid,
            "attempt": attempt,
            "entries": [{"lsn": n, "record": {"key": f"s{n}", "state": "Completed", "output": n}} for n in lsns],
        }
    ]


# ----- the store alone ------------------------------------------------------------------------


async def test_a_write_retried_after_its_answer_was_lost_lands_once(database: str) -> None:
    # Workers starting together create the schema once, one at a time (advisory lock), without error.
    stores = [PostgresStore(database, NoBatches(), "ns", f"w{i}") for i in range(4)]  # type: ignore[arg-type]
    await asyncio.gather(*(s.start() for s in stores))
    store = stores[0]
    try:
        write = store.prepare(runs_of("u1", 1, 1, 2) + runs_of("u2", 1, 1))
        await write()
        await write()  # the same flush again: its first answer was lost
        await store.prepare(runs_of("u1", 1, 2, 3))()  # a later flush overlapping it
        found = await store.entries("ns", "u1")
        assert sorted((e.attempt, e.lsn, e.worker) for e in found) == [(1, 1, "w0"), (1, 2, "w0"), (1, 3, "w0")]
        assert await store.entries("other-namespace", "u1") == []
        (count,) = await query(database, "SELECT count(*) FROM kubestep_steps")
        assert count[0] == 4
    finally:
        for s in stores:
            await s.close()


async def test_a_statement_whose_caller_is_cancelled_runs_to_its_end_and_its_connection_stays_usable(
    database: str,
) -> None:
    """An ending preempts its run's checkpoint, which may be mid-archive: asyncpg left that connection
    half-way and the pool handed it out again (the chaos soak: the next flush failed a run with
    "cannot switch to state 12; another operation (2) is in progress")."""
    store = PostgresStore(database, NoBatches(), "ns", "w")  # type: ignore[arg-type]
    await store.start()
    try:
        await store._use(lambda conn: conn.execute("CREATE TABLE probe (n int)"))
        caller = asyncio.ensure_future(
            store._use(lambda conn: conn.execute("SELECT pg_sleep(0.3); INSERT INTO probe VALUES (1)"))
        )
        await asyncio.sleep(0.1)  # the statement is on the server
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        for _ in range(10):  # every connection of the pool answers, the one the statement had included
            await asyncio.gather(*(store.entries("ns", "u") for _ in range(8)))
        await asyncio.sleep(0.4)
        (count,) = await query(database, "SELECT count(*) FROM probe")
        assert count[0] == 1, "the statement ran to its end"
    finally:
        await store.close()


async def test_chunks_and_a_finished_run_are_kept_and_what_status_holds_is_dropped(database: str) -> None:
    store = PostgresStore(database, NoBatches(), "ns", "w")  # type: ignore[arg-type]
    await store.start()
    try:
        execution = {"metadata": {"name": "r", "namespace": "ns", "uid": "u9"}, "status": {}}
        records = [{"key": f"s{i}", "state": "Completed", "output": "x" * 10} for i in range(5)]
        refs = await store.archive(execution, records, 0)
        orphan = await store.archive(execution, records[:1], 0)  # a retried archive: never listed
        assert all(r["configMap"].startswith("postgres:") for r in refs + orphan)
        assert await store.load("ns", refs, "u9") == records
        with pytest.raises(JournalError):  # keyed by the run: another uid cannot read it
            await store.load("ns", refs, "u10")
        await store.prepare(runs_of("u9", 1, 1, 2))()
        final = {**execution, "status": {"phase": "Completed", "finishedAt": "2026-01-01T00:00:00Z", "journal": refs}}
        await store.ended(final)
        assert await store.finished("ns", "r") == final
        assert await store.finished("ns", "other") is None
        assert await store.entries("ns", "u9") == [], "status holds every record once its holder ended the run"
        chunks = await query(database, "SELECT chunk FROM kubestep_chunks WHERE uid = 'u9'")
        assert sorted(c[0] for c in chunks) == sorted(r["configMap"] for r in refs), "the orphan went"
    finally:
        await store.close()


async def test_retention_deletes_the_namespaces_runs_that_ended_before_it_one_sweeper_at_a_time(database: str) -> None:
    store = PostgresStore(database, NoBatches(), "ns", "w")  # type: ignore[arg-type]
    await store.start()
    try:
        for uid, namespace, ended in (
            ("old", "ns", "2026-01-01"),
            ("new", "ns", "2026-03-01"),
            ("elsewhere", "other", "2026-01-01"),
        ):
            execution = {"metadata": {"name": uid, "namespace": namespace, "uid": uid}, "status": {}}
            refs = await store.archive(execution, [{"key": "s", "state": "Completed", "output": 1}], 0)
            status = {"phase": "Completed", "finishedAt": f"{ended}T00:00:00Z", "journal": refs}
            await store.ended({**execution, "status": status})
        await store.prepare(runs_of("running", 1, 1))()  # a run still running: rows only, never swept
        cutoff = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
        # Another worker of the namespace sweeping now holds the lock: this one skips.
        other = await asyncpg.connect(database)
        try:
            async with other.transaction():
                assert await other.fetchval("SELECT pg_try_advisory_xact_lock($1, hashtext('ns'))", SWEEP_LOCK)
                assert await store.sweep("ns", cutoff) == 0
        finally:
            await other.close()
        assert await store.sweep("ns", cutoff) == 1
        assert await store.finished("ns", "old") is None
        assert await store.finished("ns", "new") is not None and await store.finished("other", "elsewhere") is not None
        left = {r[0] for r in await query(database, "SELECT uid FROM kubestep_chunks")}
        assert left == {"new", "elsewhere"}
        assert [e.lsn for e in await store.entries("ns", "running")] == [1]
        assert await store.sweep("ns", cutoff) == 0
    finally:
        await store.close()


# ----- runs through it ------------------------------------------------------------------------


async def test_steps_go_to_postgres_and_the_history_is_exact(
    pg_client: KubestepClient,
    client: KubestepClient,
    workers: Any,
    control_plane: Any,
    run_namespace: str,
    database: str,
) -> None:
    workers(name="pg-writer", env=store_env(database, KUBESTEP_STATUS_STEPS="4", KUBESTEP_STATUS_SECONDS="1"))
    h = await pg_client.start("steps", {"count": 30, "seconds": 0.1})
    uid = (await pg_client._get_object(h.id))["metadata"]["uid"]

    async def rows_while_running() -> list[Any] | None:
        return await query(database, "SELECT lsn FROM kubestep_steps WHERE uid = $1", uid) or None

    await until(rows_while_running, 20, "step rows in Postgres")
    assert len(completed_steps(await h.status())) >= 1, "the client folds the rows in"
    result = await h.result(timeout=60)
    e = await h.status()
    assert e.status.steps_completed == 30 and e.status.current_step == "step-29"
    history = await h.steps()
    assert [s.key for s in history] == [f"step-{i}" for i in range(30)]
    assert [s.output["token"] for s in history] == result["tokens"]
    status = (await pg_client._get_object(h.id))["status"]
    refs = [r["configMap"] for r in status["journal"]]
    assert refs and all(r.startswith("postgres:") for r in refs), "older records archived in Postgres"
    # Nothing of the steps went to etcd but the status checkpoint: no StepBatch, no ConfigMap.
    out = control_plane.kubectl(
        "-n", run_namespace, "get", "stepbatches", "-l", batches.member_label(uid), "-o", "json"
    )
    assert json.loads(out.stdout)["items"] == []
    out = control_plane.kubectl(
        "-n", run_namespace, "get", "configmaps", "-l", f"{api.LABEL_EXECUTION_UID}={uid}", "-o", "json"
    )
    assert json.loads(out.stdout)["items"] == []
    kept = await query(database, "SELECT name FROM kubestep_runs WHERE uid = $1", uid)
    assert [r[0] for r in kept] == [h.id]
    assert await query(database, "SELECT lsn FROM kubestep_steps WHERE uid = $1", uid) == []
    with pytest.raises(JournalError, match="KUBESTEP_POSTGRES_DSN"):
        await client.step_history(h.id)  # a client without the DSN says what it lacks


async def test_a_killed_worker_s_steps_are_replayed_from_postgres_not_run_again(
    pg_client: KubestepClient, workers: Any, database: str
) -> None:
    doomed = workers(name="pg-doomed", env=store_env(database, KUBESTEP_STATUS_SECONDS="600"))  # rows only
    h = await pg_client.start("steps", {"count": 6, "seconds": 0.3})

    async def three_done() -> list[Any] | None:
        done = completed_steps(await h.status())
        return done if len(done) >= 3 else None

    before = {s.key: s.output["token"] for s in await until(three_done, 30, "three steps")}
    assert doomed is not None
    doomed.signal(signal.SIGKILL)
    await until_phase(pg_client, h.id, api.Phase.QUEUED, timeout=20)
    workers(name="pg-rescuer", env=store_env(database))
    await h.result(timeout=30)
    history = await h.steps()
    assert [s.key for s in history] == [f"step-{i}" for i in range(6)]
    for s in history:
        if s.key in before:
            assert s.output["token"] == before[s.key] and s.output["worker"] == "pg-doomed", "replayed, not run again"


async def test_a_postgres_outage_pauses_the_run_which_then_completes(
    pg_client: KubestepClient, workers: Any, postgres: LocalPostgres, database: str
) -> None:
    workers(name="pg-patient", env=store_env(database, KUBESTEP_STATUS_SECONDS="1"))
    h = await pg_client.start("steps", {"count": 20, "seconds": 0.2})

    async def three_done() -> list[Any] | None:
        done = completed_steps(await h.status())
        return done if len(done) >= 3 else None

    before = {s.key: s.output["token"] for s in await until(three_done, 30, "three steps")}
    postgres.stop()
    try:
        await asyncio.sleep(4)
        status = (await pg_client._get_object(h.id))["status"]
        assert status["phase"] == api.Phase.RUNNING, status  # paused, not failed, not handed back
        held = int(status.get("stepsCompleted") or 0)
        await asyncio.sleep(2)
        assert int((await pg_client._get_object(h.id))["status"].get("stepsCompleted") or 0) == held, "no progress"
    finally:
        postgres.start()
    result = await h.result(timeout=60)
    final = (await pg_client._get_object(h.id))["status"]
    assert final["phase"] == api.Phase.COMPLETED and final["attempt"] == 1, "rode out the outage: never replayed"
    history = await h.steps()
    assert [s.output["token"] for s in history] == result["tokens"]
    for s in history:
        if s.key in before:
            assert s.output["token"] == before[s.key]


def _cli(control_plane: Any, namespace: str, dsn: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBESTEP_POSTGRES_DSN")}
    env["KUBECONFIG"] = str(control_plane.kubeconfig)
    if dsn:
        env["KUBESTEP_POSTGRES_DSN"] = dsn
    return subprocess.run(
        [sys.executable, "-m", "kubestep._cli", *args, "-n", namespace],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_a_deleted_run_is_still_shown_from_postgres(
    pg_client: KubestepClient, workers: Any, control_plane: Any, run_namespace: str, database: str
) -> None:
    workers(name="pg-keeper", env=store_env(database, KUBESTEP_STATUS_STEPS="4"))
    h = await pg_client.start("steps", {"count": 12, "seconds": 0.01}, ttl_seconds_after_finished=0)
    result = await h.result(timeout=60)

    async def deleted() -> bool:
        got = control_plane.kubectl("-n", run_namespace, "get", "wfx", h.id, check=False)
        return got.returncode != 0 and "NotFound" in got.stderr

    await until(deleted, 30, "retention to delete the run")
    e = await pg_client.get_execution(h.id)
    assert e.status.phase == api.Phase.COMPLETED and e.status.steps_completed == 12
    history = await pg_client.step_history(h.id)
    assert [s.output["token"] for s in history] == result["tokens"]
    shown = _cli(control_plane, run_namespace, database, "steps", h.id, "-o", "json")
    assert shown.returncode == 0, shown.stderr
    assert [s["key"] for s in json.loads(shown.stdout)] == [f"step-{i}" for i in range(12)]
    got = _cli(control_plane, run_namespace, database, "get", h.id, "-o", "json")
    assert got.returncode == 0 and h.id in got.stdout, got.stderr
    gone = _cli(control_plane, run_namespace, None, "get", h.id)
    assert gone.returncode != 0, "without the DSN the run is gone, as for kubectl"


async def test_the_server_reads_history_from_postgres_for_callers_who_may_read_runs_and_no_one_else(
    pg_client: KubestepClient, workers: Any, control_plane: Any, run_namespace: str, database: str
) -> None:
    """``kubestep server`` with the DSN: a run's records archived in Postgres and a run retention
    deleted are served to a token that may ``get`` runs in the namespace; the server reads them with
    its own connection, and a token that may not is refused (403) before anything is read there: the
    apiserver answers its GET of the run 403, never the 404 after which a deleted run's kept state is read."""
    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer

    from kubestep._kube import Kube
    from kubestep_server.app import make_app
    from kubestep_server.settings import ServerSettings

    workers(name="pg-served", env=store_env(database, KUBESTEP_STATUS_STEPS="4"))
    kept = await pg_client.start("steps", {"count": 12, "seconds": 0.01})
    gone = await pg_client.start("steps", {"count": 6, "seconds": 0.01}, ttl_seconds_after_finished=0)
    # Both followed from now on: the one with no TTL left is deleted as soon as it ends.
    kept_result, gone_result = await asyncio.gather(kept.result(timeout=60), gone.result(timeout=60))
    refs = (await pg_client.get_execution(kept.id)).status.journal or []
    assert refs and all(r.config_map.startswith("postgres:") for r in refs), refs  # archived in Postgres

    async def deleted() -> bool:
        got = control_plane.kubectl("-n", run_namespace, "get", "wfx", gone.id, check=False)
        return got.returncode != 0 and "NotFound" in got.stderr

    await until(deleted, 30, "retention to delete the run")
    kubectl = control_plane.kubectl
    for account in ("reader", "stranger"):
        kubectl("-n", run_namespace, "create", "serviceaccount", account)
    kubectl("-n", run_namespace, "create", "role", "reader", "--verb=get,list,watch", "--resource=workflowexecutions")
    kubectl(
        "-n",
        run_namespace,
        "create",
        "rolebinding",
        "reader",
        "--role=reader",
        f"--serviceaccount={run_namespace}:reader",
    )
    token = {a: kubectl("-n", run_namespace, "create", "token", a).stdout.strip() for a in ("reader", "stranger")}

    app = make_app(ServerSettings(namespace=run_namespace, postgres_dsn=database), Kube(str(control_plane.kubeconfig)))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession(str(server.make_url(""))) as http:

            async def get(path: str, who: str) -> tuple[int, Any]:
                async with http.get(path, headers={"Authorization": f"Bearer {token[who]}"}) as r:
                    return r.status, await r.json()

            status, body = await get(f"/api/v1/executions/{kept.id}/steps", "reader")
            assert status == 200, body
            assert [s["output"]["token"] for s in body["steps"]] == kept_result["tokens"]
            status, body = await get(f"/api/v1/executions/{gone.id}/steps", "reader")
            assert status == 200, body
            assert [s["output"]["token"] for s in body["steps"]] == gone_result["tokens"]
            status, body = await get(f"/api/v1/executions/{gone.id}", "reader")
            assert status == 200 and body["status"]["phase"] == "Completed", body
            for path in (
                f"/api/v1/executions/{gone.id}/steps",
                f"/api/v1/executions/{gone.id}",
                f"/api/v1/executions/{kept.id}/steps",
            ):
                status, body = await get(path, "stranger")
                assert status == 403, (path, body)
    finally:
        await server.close()
