"""The chaos soak, short (issue 10): every fault kind at least once, every invariant checked.

The full soak is ``make chaos`` (500 runs, two minutes of faults); ``tests/chaos/soak.py`` says what
is injected and what is checked. It runs on a control plane of its own, since it kills the apiserver
and etcd."""

from __future__ import annotations

import pytest

from .chaos.soak import Config, soak
from .harness import E2E

pytestmark = pytest.mark.skipif(E2E, reason="kills the apiserver and etcd: a local control plane of its own")


async def test_a_short_soak_keeps_every_promise() -> None:
    cfg = Config(
        runs=60,
        steps=8,
        fault_seconds=45,
        worker_kill_every=5,
        operator_kills=2,
        apiserver_kills=1,
        etcd_kills=1,
        settle_timeout=120,
        seed=7,
    )
    report = await soak(cfg)
    print(report.table())
    assert {"worker SIGKILL", "operator SIGKILL", "apiserver SIGKILL", "etcd SIGKILL"} <= set(report.faults)
    assert report.faults["cancel (accepted)"] > 0 and report.phases, report.table()
    assert report.ok(), report.table()
