"""The worker's step ledger: what is recorded, what is sent, and what stays to send (pure)."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from kubestep import _protocol as api
from kubestep._errors import ReplayMismatch
from kubestep._worker.ledger import Ledger


def rec(key: str, state: str = api.StepState.COMPLETED, kind: str = "Run") -> dict[str, Any]:
    return {"key": key, "kind": kind, "state": state}


def status_after(ledger: Ledger, ops: list[dict[str, Any]], before: dict[str, Any]) -> dict[str, Any]:
    """Applies the ops the way the apiserver would (only the operations the ledger emits)."""
    status = {k: (list(v) if isinstance(v, list) else v) for k, v in before.items()}
    for op in ops:
        path = op["path"].split("/")[2:]
        if path == ["steps"]:
            status["steps"] = list(op["value"])
        elif path == ["steps", "-"]:
            status["steps"].append(op["value"])
        elif path[0] == "steps":
            status["steps"][int(path[1])] = op["value"]
        else:
            status[path[0]] = op["value"]
    return status


def test_a_record_put_while_an_append_is_in_flight_goes_with_the_next_one() -> None:
    ledger, server = Ledger({}, window=0), {}
    ledger.put(rec("a"))
    ops, sent = ledger.append_ops(server)  # the append of "a" is built and sent
    ledger.put(rec("b", api.StepState.FAILED))  # a concurrent step records "b" meanwhile
    server = status_after(ledger, ops, server)
    ledger.written(sent)
    assert [r["key"] for r in server["steps"]] == ["a"] and server["stepsCompleted"] == 1
    ops, sent = ledger.append_ops(server)
    server = status_after(ledger, ops, server)
    ledger.written(sent)
    assert [r["key"] for r in server["steps"]] == ["a", "b"]
    # "b" is run again and now completes: its record is replaced in place, not appended.
    ledger.put(rec("b"))
    ops, sent = ledger.append_ops(server)
    assert ops[0] == {"op": "replace", "path": "/status/steps/1", "value": rec("b")}
    server = status_after(ledger, ops, server)
    ledger.written(sent)
    assert server["steps"][1]["state"] == api.StepState.COMPLETED and server["stepsCompleted"] == 2
    nothing_new = ledger.append_ops(server)[0]
    assert nothing_new[0] == {"op": "add", "path": "/status/stepsCompleted", "value": 2}
    assert not [op for op in nothing_new if op["path"].startswith("/status/steps/")], "no record sent twice"


def test_a_record_replaced_while_its_append_is_in_flight_stays_dirty() -> None:
    """A bug this test found: the dirty mark of a record replaced again while its replacement was in
    flight was cleared when that write landed, so the newer record was never sent."""
    ledger, server = Ledger({}, window=0), {}
    ledger.put(rec("a"))
    ops, sent = ledger.append_ops(server)
    server = status_after(ledger, ops, server)
    ledger.written(sent)
    ledger.put(rec("a", api.StepState.FAILED))
    ops, sent = ledger.append_ops(server)
    ledger.put(rec("a"))  # changed again after the replace was built
    server = status_after(ledger, ops, server)
    ledger.written(sent)
    assert 0 in ledger.dirty, "the second change was not sent yet"
    ops, sent = ledger.append_ops(server)
    server = status_after(ledger, ops, server)
    ledger.written(sent)
    assert server["steps"][0]["state"] == api.StepState.COMPLETED and not ledger.dirty


def test_the_completed_count_counts_last_records_and_not_unsent_ones() -> None:
    ledger = Ledger({}, window=0)
    for key in ("a", "b", "c"):
        ledger.put(rec(key))
    ledger.put(rec("b", api.StepState.INTERRUPTED))
    assert ledger.completed_count() == 2
    assert ledger.completed_count(upto=1) == 1


def test_archiving_takes_the_oldest_final_records_down_to_half_the_window() -> None:
    ledger = Ledger({}, window=4)
    for key in "abcd":
        ledger.put(rec(key))
    assert ledger.to_archive() is None
    ledger.put(rec("e", api.StepState.WAITING, "Wait"))
    assert ledger.to_archive() == (0, 3)
    ledger = Ledger({}, window=4)
    ledger.put(rec("w", api.StepState.WAITING, "Wait"))  # a record that may still change is never archived
    for key in "abcd":
        ledger.put(rec(key))
    assert ledger.to_archive() is None


def test_a_claim_loads_the_journal_then_status_and_lookups_check_the_kind() -> None:
    ledger = Ledger({}, window=8)
    ledger.load(
        [rec("a"), rec("b", api.StepState.FAILED)],
        {
            "steps": [rec("b"), rec("w", api.StepState.WAITING, "Wait")],
            "journal": [{"configMap": "c", "steps": 2}],
            "eventsConsumed": ["e1"],
        },
    )
    assert ledger.archived == 2 and ledger.lookup("b", "Run") == rec("b") and ledger.completed_count() == 2
    assert ledger.consumed == ["e1"] and ledger.status_fields()["steps"] == [
        rec("b"),
        rec("w", api.StepState.WAITING, "Wait"),
    ]
    with pytest.raises(ReplayMismatch, match="recorded as a wait"):
        ledger.lookup("w", "Run")
    assert ledger.next_event([{"name": "e1", "topic": "t"}, {"name": "e2", "topic": "t"}], "t") == {
        "name": "e2",
        "topic": "t",
    }


def test_archived_records_are_kept_as_json_text_which_the_garbage_collector_does_not_scan() -> None:
    """A long run's archived records stay in memory (lookups, merges): as text, one untracked object
    each instead of dicts a full collection walks, and read back as they were."""
    ledger = Ledger({}, window=4)
    for i in range(20):
        ledger.put({**rec(f"s{i}"), "output": {"i": i, "list": [i, {"deep": True}]}})
    start, end = ledger.to_archive() or (0, 0)
    assert (start, end) == (0, 18)
    ledger.archived = end
    ledger.freeze(start, end)
    assert all(isinstance(ledger.records[i], str) and not gc.is_tracked(ledger.records[i]) for i in range(end))
    assert all(isinstance(ledger.records[i], dict) for i in range(end, 20)), "status's records stay dicts"
    assert ledger.lookup("s3", "Run") == {**rec("s3"), "output": {"i": 3, "list": [3, {"deep": True}]}}
    assert ledger.archived_records(2, 4) == [ledger.rec(2), ledger.rec(3)]
    assert ledger.completed_count() == 20 and ledger.status_fields()["currentStep"] == "s19"
    ledger.put(rec("s0", api.StepState.FAILED))  # a key whose record is archived: appended, counted
    assert ledger.rec(ledger.index["s0"])["state"] == api.StepState.FAILED and ledger.completed_count() == 19
    assert ledger.status_fields()["steps"][-1] == rec("s0", api.StepState.FAILED)
    # A claim reads the archive back (the journal's chunks) and keeps it as text too.
    claimed = Ledger({}, window=4)
    claimed.load(ledger.archived_records(0, end), {"steps": [ledger.rec(i) for i in range(end, 21)]})
    assert all(isinstance(claimed.records[i], str) for i in range(end))
    assert claimed.lookup("s5", "Run") is not None and claimed.completed_count() == 19


# ----- the replay rule --------------------------------------------------------------------------
# ----- the replay rule --------------------------------------------------------------------------


def test_replay_reaches_every_recorded_step_in_any_order_before_a_new_one() -> None:
    ledger = Ledger({"steps": [rec("a"), rec("b"), rec("w", api.StepState.WAITING, "Wait")]}, window=0)
    assert ledger.lookup("b", "Run") is not None  # reached out of order (started together with a)
    assert ledger.mismatch("starts step 'c'") is not None  # a and w are still unreached
    assert ledger.lookup("a", "Run") is not None and ledger.lookup("w", "Wait") is not None
    assert ledger.first_unreached() is None and ledger.mismatch("starts step 'c'") is None


def test_a_renamed_step_is_named_with_what_the_code_did_instead() -> None:
    ledger = Ledger({"steps": [rec("fetch"), rec("store")]}, window=0)
    error = ledger.mismatch("starts step 'fetch-v2'")
    assert isinstance(error, ReplayMismatch)
    assert "step 'fetch' (Completed) next, but the code starts step 'fetch-v2' instead" in str(error)
    assert not isinstance(error, Exception)  # workflow code cannot swallow it


def test_a_step_recorded_as_another_kind_is_a_mismatch() -> None:
    ledger = Ledger({"steps": [rec("pause", api.StepState.WAITING, "Wait")]}, window=0)
    with pytest.raises(ReplayMismatch, match="'pause' is recorded as a wait, but the code now makes it a step"):
        ledger.lookup("pause", "Run")


def test_a_recorded_wait_the_code_never_reaches_is_a_mismatch_when_it_returns() -> None:
    ledger = Ledger({"steps": [rec("a"), rec("w", api.StepState.COMPLETED, "Wait")]}, window=0)
    ledger.lookup("a", "Run")
    error = ledger.mismatch("returns")
    assert error is not None and "records wait 'w' (Completed) next, but the code returns instead" in str(error)


def test_records_of_this_claim_are_not_replay_obligations() -> None:
    ledger = Ledger({}, window=0)
    ledger.put(rec("a"))
    assert ledger.mismatch("starts step 'b'") is None


# ----- the step journal: log sequence numbers and what waits for the group commit -----------------


def test_every_record_put_gets_the_next_lsn_and_journaling_queues_it_until_a_status_write_has_it() -> None:
    ledger = Ledger({"journalLsn": 7}, window=0, journaling=True)
    ledger.put(rec("a"))
    ledger.put(rec("b"))
    assert [e["lsn"] for e in ledger.take_pending()] == [8, 9] and ledger.pending == []
    ledger.put(rec("c"))
    ops, sent = ledger.append_ops({})
    assert {"op": "add", "path": "/status/journalLsn", "value": 10} in ops
    assert {"op": "add", "path": "/status/journalFences", "value": []} in ops
    assert {"op": "add", "path": "/status/currentStep", "value": "c"} in ops
    ledger.put(rec("d"))  # while that status write is in flight
    ledger.written(sent)
    assert [e["record"]["key"] for e in ledger.pending] == ["d"], "c is in status: no batch needs it; d still does"


def test_without_journaling_nothing_queues_but_lsns_still_count() -> None:
    ledger = Ledger({}, window=0)
    ledger.put(rec("a"))
    assert ledger.pending == [] and ledger.lsn == 1
    assert ledger.status_fields()["journalLsn"] == 1


def test_a_claim_loads_the_newer_batch_entries_after_status_as_records_to_send_not_to_commit_again() -> None:
    from kubestep._protocol.batches import Entry

    status = {"steps": [rec("a")], "journalLsn": 1, "eventsConsumed": []}
    ledger = Ledger({}, window=0, journaling=True)
    newer = [
        Entry(1, 2, rec("b")),
        Entry(1, 3, {**rec("w", kind="Event"), "event": "ev-1"}),
        Entry(1, 4, rec("b", api.StepState.FAILED)),
    ]
    ledger.load([], status, newer)
    assert [ledger.rec(i)["key"] for i in range(len(ledger.records))] == ["a", "b", "w"]
    assert ledger.rec(ledger.index["b"])["state"] == api.StepState.FAILED, "the last record of a key counts"
    assert ledger.lsn == 4 and ledger.pending == [], "already durable: not committed again"
    assert ledger.consumed == ["ev-1"], "an event a batch says was delivered is not delivered twice"
    assert ledger.unsent, "status does not have them yet: the next checkpoint writes them"
    ledger.put(rec("c"))
    assert [e["lsn"] for e in ledger.pending] == [5]


def test_a_few_large_records_are_archived_by_their_bytes_down_to_half_of_them() -> None:
    """Eight records of 600 KB would make a status etcd refuses: bytes count as well as records."""
    ledger = Ledger({}, window=8)
    big = {**rec("a"), "output": "x" * 100}
    ledger.put(big)
    assert ledger.to_archive(max_bytes=400) is None  # one record (~160 bytes), under the bytes
    for key in "bcd":
        ledger.put({**rec(key), "output": "x" * 100})
    assert ledger.to_archive(max_bytes=400) == (0, 3)  # ~640 bytes: down to at most half of 400
    ledger.put(rec("e", api.StepState.WAITING, "Wait"))
    ledger.archived = 3
    ledger.put({**rec("d"), "output": "y" * 400})  # replaced: its size is measured again
    assert ledger.to_archive(max_bytes=400) == (3, 4)
