"""An operator started on a backlog: runs created while no operator ran, as in an upgrade or an outage.

Issue 12: started on ~2,000 unqueued runs, the operator wrote every status from its kopf handler at once,
every write timed out waiting for a connection, each was retried a second later into the same pool, and
none was ever written; SIGTERM did not stop it. The pool is shrunk here (``KUBESTEP_HTTP_CONNECTIONS=2``,
which the old operator honoured) so a few hundred runs are enough to collapse the old write path; each of
these tests failed on it (1,500 runs: none queued in 120 s; the cancel honoured only after every other
run was queued; 5 s and more to exit after SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubestep import KubestepClient
from kubestep import _protocol as api

from .harness import E2E, Proc, start_operator

pytestmark = pytest.mark.skipif(E2E, reason="starts its own operator process: local control plane only, not kind")

RUNS = 1500
SHRUNK_POOL = {"KUBESTEP_HTTP_CONNECTIONS": "1"}


@pytest.fixture
async def backlog(control_plane: Any) -> AsyncIterator[tuple[str, KubestepClient]]:
    """A namespace holding RUNS runs that no operator has seen (outside the suite operator's ``t-*``)."""
    namespace = f"backlog-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", namespace)
    async with KubestepClient(namespace=namespace, kubeconfig=str(control_plane.kubeconfig)) as client:
        gate = asyncio.Semaphore(16)

        async def create(i: int) -> None:
            async with gate:
                await client.start("nobody-serves-this", {"i": i}, name=run_name(i))

        await asyncio.gather(*(create(i) for i in range(RUNS)))
        yield namespace, client
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture
def operators(control_plane: Any, tmp_path: Path) -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop(timeout=5)


def run_name(i: int) -> str:
    return f"r{i:05d}"


async def phases(client: KubestepClient) -> list[str | None]:
    items = (await client._kube.get(api.execution_path(client.namespace)))["items"]
    return [(x.get("status") or {}).get("phase") for x in items]


async def phase_of(client: KubestepClient, name: str) -> str | None:
    return (await client.get_execution(name)).status.phase


async def until(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> float:
    """Polls an async predicate; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await predicate():
            return time.monotonic() - start
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


async def test_an_operator_started_on_a_backlog_queues_every_run(
    control_plane: Any, backlog: tuple[str, KubestepClient], operators: list[Proc], tmp_path: Path
) -> None:
    namespace, client = backlog
    operators.append(start_operator(control_plane.kubeconfig, tmp_path, [namespace], env=SHRUNK_POOL))

    queued = 0

    async def all_queued() -> bool:
        nonlocal queued
        queued = (await phases(client)).count(api.Phase.QUEUED)
        return queued == RUNS

    try:
        took = await until(all_queued, 120, f"all {RUNS} runs queued", interval=1)
    except AssertionError as e:
        raise AssertionError(f"{e}: {queued} were") from None
    print(f"{RUNS} runs queued {took:.1f} s after the operator started")


async def test_a_cancel_issued_during_the_drain_is_honoured_before_the_drain_ends(
    control_plane: Any, backlog: tuple[str, KubestepClient], operators: list[Proc], tmp_path: Path
) -> None:
    namespace, client = backlog
    # Two writers: a slower drain, so "before it ends" has a wide margin.
    operators.append(
        start_operator(
            control_plane.kubeconfig, tmp_path, [namespace], env={**SHRUNK_POOL, "KUBESTEP_OPERATOR_WRITERS": "2"}
        )
    )

    async def draining() -> bool:
        return await phase_of(client, run_name(0)) is not None

    await until(draining, 60, "the drain to start")
    last = run_name(RUNS - 1)
    assert await client.cancel_execution(last)

    async def cancelled() -> bool:
        return await phase_of(client, last) == api.Phase.CANCELLED

    await until(cancelled, 30, f"the cancel of {last} to be honoured")
    seen = await phases(client)
    queued = seen.count(api.Phase.QUEUED)
    # Before the drain ends, and well before: a cancel overtakes the queue, it does not merely
    # beat its last entry.
    assert queued < RUNS // 2, f"the cancel waited behind the drain ({queued} of {RUNS - 1} runs queued first)"
    print(f"cancel honoured with {queued} of {RUNS - 1} other runs queued")

    async def all_done() -> bool:
        return all(p in (api.Phase.QUEUED, api.Phase.CANCELLED) for p in await phases(client))

    await until(all_done, 120, "the drain to end", interval=1)


async def test_sigterm_during_the_drain_stops_the_operator_promptly(
    control_plane: Any, backlog: tuple[str, KubestepClient], operators: list[Proc], tmp_path: Path
) -> None:
    namespace, client = backlog
    op = start_operator(
        control_plane.kubeconfig, tmp_path, [namespace], env={**SHRUNK_POOL, "KUBESTEP_OPERATOR_WRITERS": "2"}
    )
    operators.append(op)

    async def draining() -> bool:
        return await phase_of(client, run_name(0)) is not None

    with contextlib.suppress(AssertionError):  # an operator that never starts draining is busy too
        await until(draining, 30, "the drain to start")
    queued_at_sigterm = (await phases(client)).count(api.Phase.QUEUED)
    assert queued_at_sigterm < RUNS, "the drain ended before SIGTERM: the test proves nothing"
    sent = time.monotonic()
    op.signal(signal.SIGTERM)

    async def exited() -> bool:
        return not op.alive()

    took = await until(exited, 10, "the operator to exit after SIGTERM", interval=0.05)
    assert took <= 3.0, f"the operator took {took:.1f} s to exit"
    print(f"exited {time.monotonic() - sent:.2f} s after SIGTERM, {queued_at_sigterm}/{RUNS} runs queued by then")
