"""Leader election's rule (``electing.takeover``): pure, on this replica's own clock."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from kubestep._errors import ConflictError, NotFoundError
from kubestep_operator.electing import Elector, Observed, Timing, released, takeover

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


# ----- the elector's loop, over an in-memory Lease (the real plane: tests/test_leader.py) ---------


class Leases:
    """One Lease with resourceVersion preconditions, as the apiserver keeps it."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.rv = 0

    async def get(self, path: str) -> dict[str, Any]:
        if self.lease is None:
            raise NotFoundError(404, "not found")
        return self.lease

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.lease is not None:
            raise ConflictError(409, "exists")
        return self._store(body)

    async def request(self, method: str, path: str, json_body: dict[str, Any]) -> dict[str, Any]:
        assert self.lease is not None
        if json_body["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise ConflictError(409, "changed")
        return self._store(json_body)

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        self.lease = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.rv)}}
        return self.lease


async def test_a_leader_that_sees_another_holder_steps_down_at_once() -> None:
    leases, fast = Leases(), Timing(lease_seconds=5, renew_deadline=3, retry_period=0.01)
    elector = Elector(leases, "ns", "op", "a", fast)  # type: ignore[arg-type]
    led, down = asyncio.Event(), asyncio.Event()

    async def lead() -> None:
        led.set()

    task = asyncio.ensure_future(elector.run(lead, down.set))
    await asyncio.wait_for(led.wait(), 1)
    assert leases.lease is not None and leases.lease["spec"]["holderIdentity"] == "a"
    # Another replica took the Lease (say, after a partition): the leader stops acting at its next renewal,
    # without waiting out its renew deadline.
    leases._store({**leases.lease, "spec": {**leases.lease["spec"], "holderIdentity": "b"}})
    await asyncio.wait_for(down.wait(), 1)
    assert not elector.leading
    await asyncio.wait_for(task, 1)


async def test_a_released_lease_is_taken_by_the_standby_at_its_next_look() -> None:
    leases, fast = Leases(), Timing(lease_seconds=5, renew_deadline=3, retry_period=0.01)
    a = Elector(leases, "ns", "op", "a", fast)  # type: ignore[arg-type]
    b = Elector(leases, "ns", "op", "b", fast)  # type: ignore[arg-type]
    a_leads, b_leads = asyncio.Event(), asyncio.Event()

    async def lead_a() -> None:
        a_leads.set()

    async def lead_b() -> None:
        b_leads.set()

    ta = asyncio.ensure_future(a.run(lead_a, lambda: None))
    await asyncio.wait_for(a_leads.wait(), 1)
    tb = asyncio.ensure_future(b.run(lead_b, lambda: None))
    await asyncio.sleep(0.05)
    assert not b_leads.is_set()  # a live leader is left alone
    ta.cancel()
    await a.release()
    await asyncio.wait_for(b_leads.wait(), 1)  # well within one lease: the holder was cleared
    tb.cancel()
