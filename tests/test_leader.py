"""Two operator replicas with leader election (issue 10): the leader acts, the standby takes over.

The leader is killed with SIGKILL while a run's deadline is pending, another run waits for its
wake-up and a queued run is cancelled; the standby must handle all three. A leader that stops
cleanly releases its Lease, so the standby takes over within one retry period.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubestep import KubestepClient
from kubestep import _protocol as api

from .harness import E2E, Proc, start_operator, start_worker, until_phase, wait_until

pytestmark = pytest.mark.skipif(E2E, reason="starts and kills operator processes: local control plane only")

LEASE, RENEW, RETRY = 3.0, 2.0, 0.25
ELECTION = {
    "KUBESTEP_LEADER_LEASE_SECONDS": str(LEASE),
    "KUBESTEP_LEADER_RENEW_DEADLINE": str(RENEW),
    "KUBESTEP_LEADER_RETRY_PERIOD": str(RETRY),
}


@pytest.fixture
def ns(control_plane: Any) -> Iterator[str]:
    name = f"lead-{uuid.uuid4().hex[:8]}"  # outside the suite operator's t-*
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
async def client(control_plane: Any, ns: str) -> AsyncIterator[KubestepClient]:
    async with KubestepClient(namespace=ns, kubeconfig=str(control_plane.kubeconfig)) as c:
        yield c


def replica(control_plane: Any, tmp_path: Path, ns: str, identity: str) -> Proc:
    return start_operator(
        control_plane.kubeconfig,
        tmp_path,
        [ns],
        env={**ELECTION, "POD_NAME": identity},
        extra_args=["--leader-elect", f"--leader-election-namespace={ns}"],
    )


def holder(control_plane: Any, ns: str) -> str | None:
    out = control_plane.kubectl("-n", ns, "get", "lease", "kubestep-operator", "-o", "json", check=False)
    if out.returncode != 0:
        return None
    return (json.loads(out.stdout).get("spec") or {}).get("holderIdentity") or None


async def until_holder(control_plane: Any, ns: str, identity: str, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if holder(control_plane, ns) == identity:
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"{identity} did not take the Lease within {timeout} s (holder: {holder(control_plane, ns)})")


async def leader_and_standby(control_plane: Any, tmp_path: Path, ns: str, procs: list[Proc]) -> tuple[Proc, Proc]:
    """op-a leads (it started first), op-b stands by."""
    a = replica(control_plane, tmp_path, ns, "op-a")
    procs.append(a)
    await until_holder(control_plane, ns, "op-a", 30)
    b = replica(control_plane, tmp_path, ns, "op-b")
    procs.append(b)
    return a, b


async def test_the_standby_takes_over_a_killed_leaders_deadlines_wakeups_and_cancels(
    control_plane: Any, ns: str, client: KubestepClient, procs: list[Proc], tmp_path: Path
) -> None:
    a, b = await leader_and_standby(control_plane, tmp_path, ns, procs)
    worker = start_worker(control_plane.kubeconfig, tmp_path, ns)
    procs.append(worker)
    wait_until(
        lambda: (
            control_plane.kubectl("-n", ns, "get", "lease", f"kubestep-worker-{worker.name}", check=False).returncode
            == 0
        ),
        20,
        what="the worker's lease",
    )
    # The standby does nothing: only the leader queues runs.
    queued = await client.start("nobody-serves-this", {}, name="queued")
    await until_phase(client, queued.id, "Queued")
    assert holder(control_plane, ns) == "op-a"

    # Pending work at the moment the leader dies:
    wait = await client.start("steps", {"count": 2, "seconds": 0.01, "wait_after": 0, "wait_seconds": 5}, name="wait")
    deadline = await client.start(
        "steps", {"count": 1, "seconds": 120}, name="deadline", run_timeout_seconds=4, cancel_grace_period_seconds=30
    )
    await until_phase(client, wait.id, "Waiting")
    await until_phase(client, deadline.id, "Running")
    a.signal(signal.SIGKILL)
    killed = time.monotonic()
    await client.cancel_execution(queued.id, reason="no longer needed")

    took = await until_holder(control_plane, ns, "op-b", LEASE + 5)
    print(f"takeover after SIGKILL: {took:.2f} s (lease {LEASE:g} s, retry {RETRY:g} s)")
    assert took <= LEASE + 2 * RETRY + 1.5

    cancelled = await until_phase(client, queued.id, "Cancelled", timeout=15)
    assert cancelled.status.cancellation and cancelled.status.cancellation.acknowledged_by == "kubestep-operator"
    stopping = await until_phase(client, deadline.id, "Cancelling", "Cancelled", timeout=15)
    assert stopping.status.cancellation and stopping.status.cancellation.reason == api.StopReason.RUN_TIMEOUT
    done = await until_phase(client, wait.id, "Completed", timeout=20)  # the new leader woke it
    assert [s.key for s in done.status.steps if s.kind == "Wait"] == ["wait-0"]
    print(f"all three handled {time.monotonic() - killed:.2f} s after the kill")
    assert b.alive()


async def test_a_leader_stopping_cleanly_hands_over_within_one_retry(
    control_plane: Any, ns: str, client: KubestepClient, procs: list[Proc], tmp_path: Path
) -> None:
    a, _ = await leader_and_standby(control_plane, tmp_path, ns, procs)
    await asyncio.sleep(1)  # op-b is up and standing by
    stopped = time.monotonic()
    a.stop(timeout=10)
    took = await until_holder(control_plane, ns, "op-b", LEASE)
    print(f"takeover after SIGTERM: {time.monotonic() - stopped:.2f} s")
    run = await client.start("nobody-serves-this", {}, name="after")
    await until_phase(client, run.id, "Queued", timeout=10)
    assert took < LEASE


def test_the_renew_deadline_must_be_shorter_than_the_lease() -> None:
    from kubestep._settings import OperatorSettings

    with pytest.raises(SystemExit, match="renew deadline"):
        OperatorSettings.load(
            env={"KUBESTEP_LEADER_LEASE_SECONDS": "2", "KUBESTEP_LEADER_RENEW_DEADLINE": "5"}, leader_election=True
        )
