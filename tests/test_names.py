"""Every name a user picks is just data (issue 10): namespaces, runs and workers named after the
words and prefixes Kubestep uses internally (the scheduler's ``lease``, the worker Lease prefix, the
operator's leader Lease) behave like any other. The scheduler's keys are typed (``keys.py``;
``tests/unit/test_scheduling.py`` covers a run and a lease of the same name in memory); this runs the
whole system with such names on the real plane."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubestep import KubestepClient
from kubestep import _protocol as api

from .harness import E2E, Proc, start_operator, start_worker, until_phase, wait_until

pytestmark = pytest.mark.skipif(E2E, reason="creates namespaces named after internal words: local plane only")

NAMESPACES = ["lease", "kubestep-operator", api.LEASE_PREFIX + "lease"]
RUN_NAMES = ["lease", "run", "kubestep-operator", api.LEASE_PREFIX + "lease"]


@pytest.fixture
def internal_namespaces(control_plane: Any) -> Iterator[list[str]]:
    for ns in NAMESPACES:
        control_plane.kubectl("create", "namespace", ns, check=False)  # may remain from a reused plane
    yield NAMESPACES
    for ns in NAMESPACES:
        control_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)


async def test_runs_and_workers_named_after_internal_words(
    control_plane: Any, internal_namespaces: list[str], procs: list[Proc], tmp_path: Path
) -> None:
    procs.append(
        start_operator(
            control_plane.kubeconfig,
            tmp_path,
            internal_namespaces,
            env={"POD_NAME": "lease"},
            extra_args=["--leader-elect", "--leader-election-namespace=kubestep-operator"],
        )
    )
    for ns in internal_namespaces:
        worker = start_worker(control_plane.kubeconfig, tmp_path, ns, name="lease")
        procs.append(worker)
        wait_until(
            lambda ns=ns: (
                control_plane.kubectl("-n", ns, "get", "lease", api.LEASE_PREFIX + "lease", check=False).returncode == 0
            ),
            20,
            what=f"the worker's lease in {ns}",
        )
    for ns in internal_namespaces:
        async with KubestepClient(namespace=ns, kubeconfig=str(control_plane.kubeconfig)) as client:
            done = await client.start("steps", {"count": 2, "seconds": 0.01, "wait_after": 0, "wait_seconds": 0.5},
                                      name=RUN_NAMES[0])  # fmt: skip
            stopped = await client.start("until-cancelled", {"seconds": 0.05}, name=RUN_NAMES[1])
            timed = await client.start("steps", {"count": 50, "seconds": 0.2}, name=RUN_NAMES[2], run_timeout_seconds=1)
            queued = await client.start("nobody-serves-this", {}, name=RUN_NAMES[3])
            await until_phase(client, stopped.id, "Running")
            await client.cancel_execution(stopped.id)
            assert (await until_phase(client, done.id, "Completed", "Failed", timeout=30)).status.phase == "Completed"
            assert (await until_phase(client, stopped.id, "Cancelled", timeout=30)).status.cancellation
            t = await until_phase(client, timed.id, "Cancelled", timeout=30)
            assert t.status.reason == api.StopReason.RUN_TIMEOUT, t.status
            q = await until_phase(client, queued.id, "Queued", timeout=10)
            assert q.status.reason in (api.Reason.NO_WORKER, api.Reason.PENDING), q.status
    # The leader Lease kept its identity: no run or worker Lease was taken for it, nor it for one.
    lease = json.loads(
        control_plane.kubectl("-n", "kubestep-operator", "get", "lease", "kubestep-operator", "-o", "json").stdout
    )
    assert lease["spec"]["holderIdentity"] == "lease"
