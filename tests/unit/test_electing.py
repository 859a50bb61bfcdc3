"""Leader election's rule (``electing.takeover``): pure, on this replica's own clock."""

from __future__ import annotations

import datetime as dt

from kubestep_operator.electing import Observed, Timing, released, takeover

T = dt.datetime(2026, 11, 26, 1, 0, 0, tzinfo=dt.UTC)
TIMING = Timing(lease_seconds=15, renew_deadline=10, retry_period=2)


def held_by(who: str, renew: str = "2026-11-26T00:59:59.000000Z", transitions: int = 0) -> dict[str, object]:
    return {"holderIdentity": who, "leaseDurationSeconds": 15, "renewTime": renew, "leaseTransitions": transitions}


def test_a_free_or_missing_lease_is_taken() -> None:
    spec = takeover({}, "a", T, 100.0, Observed(), TIMING)
    assert spec is not None and spec["holderIdentity"] == "a" and spec["leaseTransitions"] == 0
    assert takeover(released(held_by("b"), T), "a", T, 100.0, Observed(), TIMING) is not None


def test_a_live_leader_is_left_alone_until_its_record_is_unchanged_for_a_lease_on_our_clock() -> None:
    seen = Observed()
    assert takeover(held_by("b"), "a", T, 100.0, seen, TIMING) is None
    assert takeover(held_by("b"), "a", T, 114.9, seen, TIMING) is None
    # The leader renewed: the clock starts again, whatever the renewTime says about other clocks.
    assert takeover(held_by("b", renew="2000-01-01T00:00:00.000000Z"), "a", T, 114.95, seen, TIMING) is None
    assert takeover(held_by("b", renew="2000-01-01T00:00:00.000000Z"), "a", T, 129.0, seen, TIMING) is None
    spec = takeover(held_by("b", renew="2000-01-01T00:00:00.000000Z"), "a", T, 130.0, seen, TIMING)
    assert spec is not None and spec["holderIdentity"] == "a" and spec["leaseTransitions"] == 1


def test_a_far_future_renew_time_from_a_skewed_clock_cannot_keep_a_dead_leader() -> None:
    seen = Observed()
    skewed = held_by("b", renew="2099-01-01T00:00:00.000000Z")
    assert takeover(skewed, "a", T, 0.0, seen, TIMING) is None
    assert takeover(skewed, "a", T, 15.0, seen, TIMING) is not None


def test_the_leader_renews_its_own_lease_keeping_its_acquire_time() -> None:
    mine = {**held_by("a", transitions=3), "acquireTime": "2026-11-26T00:00:00.000000Z"}
    spec = takeover(mine, "a", T, 0.0, Observed(), TIMING)
    assert spec is not None and spec["acquireTime"] == mine["acquireTime"] and spec["leaseTransitions"] == 3
    assert spec["renewTime"] == "2026-11-26T01:00:00.000000Z"
