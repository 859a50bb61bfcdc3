"""The step stores' pure parts (``_stores.py``, ``_postgres.py``, ``_journal.py``, ``_settings.py``):
the rows one flush inserts, chunk refs that say which store holds them, the settings that choose
the store, and group commit over a store that is down. No cluster, no database."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from kubestep import _journal as journal
from kubestep import _postgres
from kubestep import _settings as settings
from kubestep._errors import JournalError, TransportError
from kubestep._protocol import batches as b
from kubestep._settings import WorkerSettings, postgres_dsn
from kubestep._worker.committing import GroupCommit
from kubestep._worker.letting_go import transient


def test_one_flush_is_one_row_per_record_of_every_run_in_it() -> None:
    runs = [
        {"name": "a", "uid": "u-a", "attempt": 2, "entries": [{"lsn": 7, "record": {"key": "s7"}}]},
        {
            "name": "b",
            "uid": "u-b",
            "attempt": 1,
            "entries": [{"lsn": 1, "record": {"key": "s1", "output": "\u0000"}}, {"lsn": 2, "record": {"key": "s2"}}],
        },
    ]
    uids, attempts, lsns, namespaces, names, workers, records = _postgres.rows("ns", "w1", runs)
    assert uids == ["u-a", "u-b", "u-b"] and attempts == [2, 1, 1] and lsns == [7, 1, 2]
    assert namespaces == ["ns"] * 3 and names == ["a", "b", "b"] and workers == ["w1"] * 3
    # Text, as the worker encoded it: jsonb would refuse the NUL an output may hold.
    assert [json.loads(r) for r in records] == [{"key": "s7"}, {"key": "s1", "output": "\u0000"}, {"key": "s2"}]


class Chunks:
    def __init__(self, data: dict[tuple[str, str], str]) -> None:
        self.data = data

    async def chunk(self, uid: str, name: str) -> str | None:
        return self.data.get((uid, name))


class NoKube:
    async def get(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("a Postgres chunk is never read from the apiserver")


async def test_a_postgres_ref_is_read_from_the_store_with_its_digest_checked() -> None:
    records = [{"key": "a", "state": "Completed"}, {"key": "b", "state": "Completed"}]
    data = json.dumps(records, separators=(",", ":"))
    ref = {"configMap": journal.POSTGRES_REF + "c1", "steps": 2, "sha256": journal.digest(data)}
    source = Chunks({("uid-1", ref["configMap"]): data})
    assert await journal.load(NoKube(), "ns", [ref], "uid-1", source=source) == records  # type: ignore[arg-type]
    with pytest.raises(JournalError, match="missing"):  # another run's uid finds nothing
        await journal.load(NoKube(), "ns", [ref], "uid-2", source=source)  # type: ignore[arg-type]
    with pytest.raises(JournalError, match="KUBESTEP_POSTGRES_DSN"):  # a client without the DSN
        await journal.load(NoKube(), "ns", [ref], "uid-1")  # type: ignore[arg-type]
    forged = Chunks({("uid-1", ref["configMap"]): data.replace('"a"', '"z"')})
    with pytest.raises(JournalError, match="SHA-256"):
        await journal.load(NoKube(), "ns", [ref], "uid-1", source=forged)  # type: ignore[arg-type]


def test_postgres_is_chosen_only_with_a_dsn_and_the_file_form_reads_a_mounted_secret(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="KUBESTEP_POSTGRES_DSN"):
        WorkerSettings.load("m", env={"KUBESTEP_STEP_STORE": "postgres"})
    secret = tmp_path / "dsn"
    secret.write_text("postgresql://u:p@db:5432/k\n")
    s = WorkerSettings.load("m", env={"KUBESTEP_POSTGRES_DSN_FILE": str(secret)}, step_store="postgres")
    assert s.step_store == "postgres" and s.postgres_dsn == "postgresql://u:p@db:5432/k"
    assert "u:p@" not in repr(s), "the password stays out of logs of the settings"
    assert (
        postgres_dsn({"KUBESTEP_POSTGRES_DSN": "postgresql://x", "KUBESTEP_POSTGRES_DSN_FILE": "/nope"})
        == "postgresql://x"
    )
    with pytest.raises(SystemExit, match="cannot read"):
        postgres_dsn({"KUBESTEP_POSTGRES_DSN_FILE": str(tmp_path / "absent")})
    with pytest.raises(SystemExit, match="expected one of batch, status, postgres"):
        WorkerSettings.load("m", env={"KUBESTEP_STEP_STORE": "etcd"})
    assert WorkerSettings.load("m", env={}).step_store == "batch"


@pytest.mark.parametrize("raw", ["0", "-1", "nan", "inf", "36501", "a week"])
def test_a_retention_that_is_not_a_number_of_days_is_refused_at_start_up(raw: str) -> None:
    with pytest.raises(SystemExit, match="KUBESTEP_POSTGRES_RETENTION_DAYS"):
        WorkerSettings.load("m", env={"KUBESTEP_POSTGRES_RETENTION_DAYS": raw})


def test_retention_is_off_unless_set() -> None:
    assert WorkerSettings.load("m", env={}).postgres_retention_days is None
    assert WorkerSettings.load("m", env={"KUBESTEP_POSTGRES_RETENTION_DAYS": "0.5"}).postgres_retention_days == 0.5


class DownStore:
    """A store whose writes fail as a server that is down does, ``failures`` times."""

    kind = "test"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.written: list[list[dict[str, Any]]] = []
        self.tries = 0

    def prepare(self, runs: Any) -> Callable[[], Awaitable[None]]:
        runs = list(runs)

        async def write() -> None:
            self.tries += 1
            if self.failures:
                self.failures -= 1
                raise TransportError("the Postgres step store: ConnectionRefusedError")
            self.written.append(runs)

        return write


def entries(*lsns: int) -> list[dict[str, Any]]:
    return [{"lsn": n, "record": {"key": f"s{n}", "kind": "Run", "state": "Completed"}} for n in lsns]


async def test_a_store_outage_pauses_the_runs_and_a_longer_one_lets_them_go_as_transient() -> None:
    store = DownStore(failures=3)
    gc = GroupCommit(None, "ns", "w", outage_seconds=5, store=store)  # type: ignore[arg-type]
    await gc.commit("r", "u", 1, entries(1, 2))  # paused through three refusals, then written
    assert store.tries == 4 and [[e["lsn"] for e in r["entries"]] for r in store.written[0]] == [[1, 2]]
    down = DownStore(failures=10**6)
    gc = GroupCommit(None, "ns", "w", outage_seconds=0.3, store=down)  # type: ignore[arg-type]
    with pytest.raises(TransportError) as caught:
        await asyncio.wait_for(gc.commit("r", "u", 1, entries(3)), 10)
    # What the run then does (running.py): Release(held=True) and let_go, which re-queues it (not
    # Failed) for a transient error, exactly as after a StepBatch write the apiserver never took.
    assert transient(caught.value)
    await gc.close()


def test_entries_from_rows_follow_the_same_counting_rules_as_batches() -> None:
    status = {
        "journalLsn": 1,
        "attempt": 2,
        "journalHolder": "w2",
        "journalFences": [{"attempt": 1, "lsn": 2, "worker": "w1"}],
    }
    rows = [
        b.Entry(1, 2, {"key": "s2"}, "w1"),
        b.Entry(1, 3, {"key": "s3"}, "w1"),  # past its attempt's fence: never counts
        b.Entry(2, 3, {"key": "s3"}, "w2"),
        b.Entry(2, 4, {"key": "s4"}, "intruder"),  # not the holder (the DB credential is shared)
    ]
    counted = b.counted(status, rows, open_attempt=2)
    assert [(e.attempt, e.lsn) for e in counted] == [(1, 2), (2, 3)]


def test_postgres_without_asyncpg_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match=r"pip install 'kubestep\[postgres\]'"):
        WorkerSettings.load("m", env={"KUBESTEP_STEP_STORE": "postgres", "KUBESTEP_POSTGRES_DSN": "postgresql://x"})


def test_the_worker_flag_chooses_postgres_and_refuses_it_without_a_dsn() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBESTEP_POSTGRES", "KUBESTEP_STEP_STORE"))}
    proc = subprocess.run(
        [sys.executable, "-m", "kubestep._cli", "worker", "kubestep.examples", "--step-store", "postgres"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "KUBESTEP_STEP_STORE=postgres needs the database" in proc.stderr, proc.stderr
