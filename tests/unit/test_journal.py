"""The journal's chunks and merges: status.journal stays short for any run length, and a merge is made
only where it pays (pure, no cluster)."""

from __future__ import annotations

import json
import random
from typing import Any

from kubestep import _journal as journal
from kubestep import _protocol as api
from kubestep._worker.ledger import Ledger


def refs(*levels: int) -> list[dict[str, Any]]:
    return [{"configMap": f"c{i}", "steps": 1, **({"level": lv} if lv else {})} for i, lv in enumerate(levels)]


def merge_plan(chain: list[dict[str, Any]]) -> tuple[int, int, int] | None:
    return next(journal.merge_candidates(chain), None)


def test_nothing_to_merge_below_the_fanout() -> None:
    assert merge_plan(refs(*[0] * (journal.FANOUT - 1))) is None


def test_the_oldest_run_of_one_level_is_merged_first() -> None:
    f = journal.FANOUT
    assert merge_plan(refs(*[0] * f)) == (0, f, 0)
    assert merge_plan(refs(1, 1, *[0] * f)) == (2, 2 + f, 0)
    assert merge_plan(refs(*[1] * f, *[0] * 3)) == (0, f, 1)


def test_the_list_stays_logarithmic_however_many_chunks_are_archived() -> None:
    chain: list[dict[str, Any]] = []
    for n in range(5000):
        chain = [*chain, *refs(0)]
        plan = merge_plan(chain)
        if plan is not None:
            first, end, level = plan
            chain = [*chain[:first], {"configMap": f"m{n}", "steps": 0, "level": level + 1}, *chain[end:]]
    assert len(chain) <= journal.FANOUT * 4


def test_chunks_hold_at_most_chunk_bytes_and_chunk_count_says_how_many_without_writing() -> None:
    rng = random.Random(7)
    records = [{"key": f"k{i}", "output": "x" * rng.choice([10, 300, 40_000, 200_000])} for i in range(400)]
    parts = list(journal.chunks(records))
    assert [r for part in parts for r in part] == records
    for part in parts:
        data = json.dumps(part, separators=(",", ":"))
        assert len(data) <= journal.CHUNK_BYTES or len(part) == 1
    assert journal.chunk_count(journal.record_bytes(r) for r in records) == len(parts)
    assert journal.chunk_count([]) == 0
    big = {"key": "big", "output": "x" * (journal.CHUNK_BYTES + 10)}  # one record alone, however large
    assert [len(p) for p in journal.chunks([records[0], big, records[1]])] == [1, 1, 1]


def test_full_chunks_are_never_rewritten_one_level_up() -> None:
    """A long run archived as running.py does: the oldest final records into chunks, then the merge
    Ledger.merge_span picks. Chunks that are full already never merge (they would come out as many, and
    each level would write every byte again, all but the last copy orphans); each merge at least halves
    what it replaces; every record is written once per level it reaches, and no more."""
    ledger = Ledger({}, window=8)
    written = 0
    levels: set[int] = set()
    for i in range(6000):
        ledger.put({"key": f"s{i}", "kind": "Run", "state": api.StepState.COMPLETED, "output": "o" * 2000})
        span = ledger.to_archive()
        if span is None:
            continue
        start, end = span
        ledger.archived = end
        new = list(journal.chunks(ledger.archived_records(start, end)))
        written += sum(journal.record_bytes(r) for part in new for r in part)
        chain = ledger.journal + [{"configMap": f"c{i}", "steps": len(p)} for p in new]
        merge = ledger.merge_span(chain)
        if merge is not None:
            first, last, level, a, b = merge
            merged = list(journal.chunks(ledger.archived_records(a, b)))
            assert len(merged) <= (last - first) // 2
            assert sum(r["steps"] for r in chain[first:last]) == b - a == sum(len(p) for p in merged)
            written += sum(journal.record_bytes(r) for r in ledger.archived_records(a, b))
            levels.add(level + 1)
            chain = (
                chain[:first]
                + [{"configMap": f"m{i}", "steps": len(p), "level": level + 1} for p in merged]
                + chain[last:]
            )
        ledger.journal = chain
        ledger.freeze(start, end)  # as running.py does once the archive landed
    live = sum(journal.record_bytes(r) for r in ledger.archived_records(0, ledger.archived))
    assert sum(r["steps"] for r in ledger.journal) == ledger.archived
    # 2 KB records, 4 per chunk at level 0: level 1 holds 16 of them (128 KB), level 2 (16 x 128 KB = 2 MiB)
    # fits in 4 chunks of 512 KiB, and those, full, are where merging stops.
    assert levels == {1, 2}
    assert written <= 3 * live
    full = [r for r in ledger.journal if r.get("level") == 2]
    assert len(full) >= journal.FANOUT  # enough of them that the old rule would have merged them again


def test_a_merge_pays_only_if_it_at_least_halves_the_chunks() -> None:
    assert journal.worthwhile(16, [1000] * 100)  # small chunks: 16 become 1
    assert not journal.worthwhile(16, [300_000] * 10)  # one record per chunk: 10 of them > 8
    assert journal.worthwhile(16, [250_000] * 16)  # two per chunk: 8
    assert not journal.worthwhile(16, [250_000] * 17)
