"""The journal's merge plan: status.journal stays short for any run length (pure, no cluster)."""

from __future__ import annotations

from kubestep import _journal as journal


def refs(*levels: int) -> list[dict[str, object]]:
    return [{"configMap": f"c{i}", "steps": 1, **({"level": lv} if lv else {})} for i, lv in enumerate(levels)]


def test_nothing_to_merge_below_the_fanout() -> None:
    assert journal.merge_plan(refs(*[0] * (journal.FANOUT - 1))) is None


def test_the_oldest_run_of_one_level_is_merged_first() -> None:
    f = journal.FANOUT
    assert journal.merge_plan(refs(*[0] * f)) == (0, f, 0)
    assert journal.merge_plan(refs(1, 1, *[0] * f)) == (2, 2 + f, 0)
    assert journal.merge_plan(refs(*[1] * f, *[0] * 3)) == (0, f, 1)


def test_the_list_stays_logarithmic_however_many_chunks_are_archived() -> None:
    chain: list[dict[str, object]] = []
    for n in range(5000):
        chain = [*chain, *refs(0)]
        plan = journal.merge_plan(chain)
        if plan is not None:
            first, end, level = plan
            chain = [*chain[:first], {"configMap": f"m{n}", "steps": 0, "level": level + 1}, *chain[end:]]
    assert len(chain) <= journal.FANOUT * 4
