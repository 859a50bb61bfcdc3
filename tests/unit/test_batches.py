"""The step journal's rules (``_protocol/batches.py``): which batch entries count, the fences a claim
sets, and when a batch is garbage. Pure."""

from __future__ import annotations

from typing import Any

from kubestep._batches import body, worker_label
from kubestep._protocol import batches as b
from kubestep._protocol.batches import Entry, Member


def e(attempt: int, lsn: int, key: str | None = None, worker: str = "") -> Entry:
    """An entry of ``worker``'s batch; by default the holder of its attempt (``w<attempt>``)."""
    record = {"key": key or f"s{lsn}", "kind": "Run", "state": "Completed"}
    return Entry(attempt, lsn, record, worker or f"w{attempt}")


def lsns(entries: list[Entry]) -> list[tuple[int, int]]:
    return [(x.attempt, x.lsn) for x in entries]


def test_the_open_attempts_entries_newer_than_status_count_gap_free() -> None:
    status = {"attempt": 3, "journalLsn": 4, "journalHolder": "w3"}
    found = [e(3, 3), e(3, 5), e(3, 6), e(3, 8)]  # 3 is in status already; 7 has not landed (or never will)
    assert lsns(b.counted(status, found, open_attempt=3)) == [(3, 5), (3, 6)]


def test_a_holder_that_lost_its_run_writes_past_its_fence_in_vain() -> None:
    # Attempt 3 crashed after lsn 6 (as the claim of attempt 4 saw it); its zombie wrote 7 and 8 later.
    status = {
        "attempt": 4,
        "journalLsn": 4,
        "journalHolder": "w4",
        "journalFences": [{"attempt": 3, "lsn": 6, "worker": "w3"}],
    }
    found = [e(3, 5), e(3, 6), e(3, 7, "zombie"), e(4, 7), e(4, 8), e(3, 8, "zombie")]
    counted = b.counted(status, found, open_attempt=4)
    assert lsns(counted) == [(3, 5), (3, 6), (4, 7), (4, 8)]
    assert b.fences_at_claim(status, counted) == [
        {"attempt": 3, "lsn": 6, "worker": "w3"},
        {"attempt": 4, "lsn": 8, "worker": "w4"},
    ]


def test_entries_of_an_attempt_neither_fenced_nor_open_never_count() -> None:
    status = {"attempt": 5, "journalLsn": 2}
    assert b.counted(status, [e(3, 3), e(4, 3)], open_attempt=5) == []


def test_a_duplicate_write_counts_once() -> None:
    status = {"attempt": 1, "journalLsn": 0, "journalHolder": "w1"}
    assert lsns(b.counted(status, [e(1, 1), e(1, 1), e(1, 2)], open_attempt=1)) == [(1, 1), (1, 2)]


def test_another_worker_s_batch_naming_the_run_never_counts() -> None:
    """A token of another worker may create a StepBatch naming any run (RBAC cannot say which), but
    admission holds its spec.worker to that worker's pod: only the holder's batches count."""
    status = {
        "attempt": 2,
        "journalLsn": 1,
        "journalHolder": "w2",
        "journalFences": [{"attempt": 1, "lsn": 3, "worker": "w1"}],
    }
    forged = [e(1, 2, "forged", worker="mallory"), e(2, 2, "forged", worker="mallory")]
    assert b.counted(status, forged, open_attempt=2) == []
    assert lsns(b.counted(status, [*forged, e(1, 2), e(1, 3), e(2, 4)], open_attempt=2)) == [(1, 2), (1, 3), (2, 4)]
    assert b.counted({"attempt": 2, "journalLsn": 1}, [e(2, 2)], open_attempt=2) == [], "no holder named: none"


def test_a_batch_is_garbage_once_every_run_in_it_is_checkpointed_past_it_gone_or_superseded() -> None:
    m = Member("uid-1", attempt=3, last_lsn=9)
    assert b.garbage(m, None), "the run is gone"
    assert b.garbage(m, {"attempt": 3, "journalLsn": 9}), "status has everything up to 9"
    assert not b.garbage(m, {"attempt": 3, "journalLsn": 8}), "the open attempt's records are needed"
    assert not b.garbage(m, {"attempt": 3, "phase": "Queued", "journalLsn": 8}), "re-queued: the next claim reads it"
    fenced = {"attempt": 4, "journalLsn": 5, "journalFences": [{"attempt": 3, "lsn": 9}]}
    assert not b.garbage(m, fenced), "fenced in by the claim of attempt 4"
    assert b.garbage(m, {"attempt": 4, "journalLsn": 5}), "attempt 4 claimed without it: never counts again"


def test_members_round_trip_through_the_labels_the_writer_sets() -> None:
    runs: list[dict[str, Any]] = [
        {"name": "a", "uid": "u-a", "attempt": 2, "entries": [{"lsn": 4, "record": {}}, {"lsn": 5, "record": {}}]},
        {"name": "b", "uid": "u-b", "attempt": 1, "entries": [{"lsn": 1, "record": {}}]},
    ]
    batch = body("ns", "w-abc-1", "w", 177, runs)
    labels = batch["metadata"]["labels"]
    assert labels[b.LABEL_EPOCH] == "177" and labels[b.LABEL_BATCH_WORKER] == "w"
    assert sorted(b.members(labels), key=lambda m: m.uid) == [Member("u-a", 2, 5), Member("u-b", 1, 1)]
    assert lsns(b.entries_of(batch, "u-a")) == [(2, 4), (2, 5)]
    assert b.members({"r.kubestep.io/x": "garbage", "other": "1.2"}) == []


def test_a_long_worker_name_becomes_a_valid_label_value() -> None:
    name = "w" * 100
    value = worker_label(name)
    assert len(value) <= 63 and value != worker_label("w" * 99)


def test_a_reader_folds_the_newer_entries_into_status_as_the_next_checkpoint_would() -> None:
    status = {
        "steps": [{"key": "a", "kind": "Run", "state": "Completed"}, {"key": "b", "kind": "Run", "state": "Failed"}],
        "stepsCompleted": 1,
        "journalLsn": 2,
    }
    newer = [e(1, 3, "b"), e(1, 4, "c")]
    folded = b.fold(status, newer)
    assert [(r["key"], r["state"]) for r in folded["steps"]] == [
        ("a", "Completed"),
        ("b", "Completed"),
        ("c", "Completed"),
    ]
    assert folded["stepsCompleted"] == 3 and folded["journalLsn"] == 4 and folded["currentStep"] == "c"
    assert status["stepsCompleted"] == 1, "the object read is left as it was"


def test_a_fenced_attempt_s_batch_goes_once_status_reaches_the_fence() -> None:
    m = Member("u", attempt=3, last_lsn=9)  # records past the fence: a holder that lost the run
    fenced = {"attempt": 4, "journalFences": [{"attempt": 3, "lsn": 6}]}
    assert not b.garbage(m, {**fenced, "journalLsn": 5})
    assert b.garbage(m, {**fenced, "journalLsn": 6})


def test_batches_of_earlier_releases_are_read_as_before() -> None:
    """This release writes ``spec.runsJSON``; a batch an earlier worker wrote holds ``spec.runs``."""
    runs: list[dict[str, Any]] = [{"name": "a", "uid": "u-a", "attempt": 1, "entries": [{"lsn": 1, "record": {}}]}]
    new = body("ns", "w-abc-1", "w", 1, runs)
    assert "runs" not in new["spec"] and b.runs_of(new["spec"]) == runs
    old = {"spec": {"worker": "w", "runs": runs}}
    assert b.entries_of(old, "u-a") == b.entries_of(new, "u-a") == [Entry(1, 1, {}, "w")]


def test_a_runs_json_that_is_not_runs_holds_nothing_and_breaks_no_reader() -> None:
    """The schema cannot look inside the text, and any worker may create a batch naming itself."""
    good = {"name": "a", "uid": "u-a", "attempt": 1, "entries": [{"lsn": 1, "record": {"key": "k"}}]}
    for text in ["", "not json", "{}", '"runs"', "[1, 2]", '[{"uid": "u-a", "attempt": "x", "entries": [{}]}]']:
        assert b.entries_of({"spec": {"worker": "w", "runsJSON": text}}, "u-a") == [], text
    bad_entry = {**good, "entries": [{"lsn": 1, "record": {"key": "k"}}, {"lsn": "two"}]}
    mixed = {"spec": {"worker": "w", "runsJSON": b.runs_json([bad_entry])}}
    assert lsns(b.entries_of(mixed, "u-a")) == [(1, 1)], "entries before an ill-formed one still read"


def test_runs_json_refuses_what_is_not_json() -> None:
    """NaN is not JSON: refused here, as the apiserver client refuses it in a status write."""
    import pytest

    with pytest.raises(ValueError):
        b.runs_json([{"uid": "u", "entries": [{"lsn": 1, "record": {"output": float("nan")}}]}])
