"""Operator and worker processes for the end-to-end tests.

With KUBESTEP_TEST_KUBECONFIG (kind), the operator and workers already run as
pods; tests that start, stop or kill processes are then skipped on kind only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

import kubestep
from kubestep import KubestepClient
from kubestep_dev import local
from kubestep_dev.local import Proc

LEASE_SECONDS = 2  # short, so "worker gone" is detected quickly in tests
E2E = bool(os.environ.get("KUBESTEP_TEST_KUBECONFIG"))

start_operator = functools.partial(local.start_operator, lease_seconds=LEASE_SECONDS)
start_worker = functools.partial(local.start_worker, lease_seconds=LEASE_SECONDS)


def wait_until(
    predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.1, what: str = "condition"
) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def private_namespace(control_plane: Any, prefix: str) -> AsyncIterator[tuple[str, KubestepClient]]:
    """A namespace of its own, which the suite's operator does not serve (it serves ``t-*``): for a
    test that starts an operator of its own with settings of its own."""
    namespace = f"{prefix}-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", namespace)
    async with KubestepClient(namespace=namespace, kubeconfig=str(control_plane.kubeconfig)) as client:
        yield namespace, client
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def operator_for(control_plane: Any, logs: Path, namespace: str, env: dict[str, str]) -> tuple[Proc, int]:
    """An operator of this test's own serving ``namespace`` alone, and its metrics port."""
    metrics = free_port()
    proc = start_operator(
        control_plane.kubeconfig, logs, [namespace], env={**env, "KUBESTEP_METRICS_PORT": str(metrics)}
    )
    return proc, metrics


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One /metrics scrape: (sample name, sorted labels) → value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (smp.name, tuple(sorted(smp.labels.items()))): smp.value
        for fam in text_string_to_metric_families(text)
        for smp in fam.samples
    }


async def phase_of(client: KubestepClient, name: str) -> str | None:
    return (await client.get_execution(name)).status.phase


async def until(predicate: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def until_phase(client: KubestepClient, name: str, *phases: str, timeout: float = 30) -> kubestep.Execution:
    last: list[kubestep.Execution] = []

    async def check() -> kubestep.Execution | None:
        e = await client.get_execution(name)
        last[:] = [e]
        return e if e.status.phase in phases else None

    try:
        return await until(check, timeout, f"{name} to reach {phases}")
    except AssertionError as err:
        raise AssertionError(f"{err}; last status: {last[0].status if last else None}") from None


def completed_steps(e: kubestep.Execution) -> list[kubestep.StepRecord]:
    return [s for s in e.status.steps if s.state == "Completed"]


__all__ = [
    "E2E",
    "LEASE_SECONDS",
    "Proc",
    "completed_steps",
    "free_port",
    "phase_of",
    "scrape",
    "start_operator",
    "start_worker",
    "until",
    "until_phase",
    "wait_until",
]
