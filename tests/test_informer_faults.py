"""The informer's rules (``kubestep._informer``) against the real apiserver, with faults injected on
purpose: connections cut mid-watch and refused for a while (a loopback TCP proxy, ``faultproxy.py``),
and a watch the apiserver itself refuses after every list (RBAC that grants ``list`` but not
``watch``). What is counted: lists (each re-reads the whole collection) and resumed watches. The old
operator informer re-listed every object 2–4 times a second for ever under the last fault; the
figures before and after are in ``bench/informer_faults.py``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kubestep import KubestepClient
from kubestep import _protocol as api
from kubestep._errors import ExecutionNotFoundError
from kubestep._informer import Change, Informer
from kubestep._kube import Kube

from .faultproxy import FaultProxy
from .harness import E2E

pytestmark = pytest.mark.skipif(E2E, reason="a loopback proxy in front of the local control plane")


async def eventually(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.asynccontextmanager
async def proxy_for(control_plane: Any) -> AsyncIterator[FaultProxy]:
    proxy = await FaultProxy.for_kubeconfig(control_plane.kubeconfig).start()
    try:
        yield proxy
    finally:
        await proxy.stop()


@contextlib.asynccontextmanager
async def informing(kubeconfig: Any, namespace: str) -> AsyncIterator[tuple[Informer, dict[str, str]]]:
    """An informer on the runs of ``namespace``; the dict maps each run it knows to the
    resourceVersion it last saw."""
    seen: dict[str, str] = {}

    def on_change(change: Change) -> None:
        if change.kind == "DELETED":
            seen.pop(change.key[1], None)
        else:
            seen[change.key[1]] = change.obj["metadata"]["resourceVersion"]

    async with Kube(str(kubeconfig)) as kube:
        informer = Informer(kube, api.execution_path(namespace), on_change, name=f"faults {namespace}")
        task = asyncio.create_task(informer.run())
        try:
            await asyncio.wait_for(informer.listed.wait(), 60)
            yield informer, seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def server_state(client: KubestepClient) -> dict[str, str]:
    page = await client.list_executions()
    return {e.raw["metadata"]["name"]: e.raw["metadata"]["resourceVersion"] for e in page.items}


async def test_connections_cut_mid_watch_are_resumed_without_a_list(control_plane: Any, namespace: str) -> None:
    async with (
        proxy_for(control_plane) as proxy,
        KubestepClient(namespace, kubeconfig=str(control_plane.kubeconfig)) as admin,
        informing(proxy.kubeconfig(control_plane.kubeconfig), namespace) as (informer, seen),
    ):
        for i in range(12):
            await admin.start("steps", {"count": i}, name=f"cut-{i}")
            await eventually(lambda: proxy.connections > proxy.cuts, what="a watch through the proxy")
            await asyncio.sleep(0.3)
            assert proxy.cut() >= 1
        want = await server_state(admin)
        await eventually(lambda: seen == want, what="the informer to see every run as the server has it")
        assert proxy.cuts >= 12
        assert informer.lists == 1  # never re-read the collection
        assert informer.resumes >= 6  # the watch was cut and taken up again from where it was


async def test_an_unreachable_apiserver_is_waited_out_and_the_watch_resumed(control_plane: Any, namespace: str) -> None:
    async with (
        proxy_for(control_plane) as proxy,
        KubestepClient(namespace, kubeconfig=str(control_plane.kubeconfig)) as admin,
        informing(proxy.kubeconfig(control_plane.kubeconfig), namespace) as (informer, seen),
    ):
        proxy.refusing = True
        proxy.cut()
        for i in range(3):
            await admin.start("steps", {"count": i}, name=f"away-{i}")
        await eventually(lambda: proxy.refused >= 2, what="the informer to try again")
        await asyncio.sleep(4)
        attempts = proxy.refused
        proxy.refusing = False
        want = await server_state(admin)
        await eventually(lambda: seen == want, what="the informer to catch up")
        assert informer.lists == 1  # the resourceVersion was still good: resumed, not re-listed
        # 4 s and more of refusals cost a handful of attempts, not one every few milliseconds: the
        # backoff waits at least 0.8, 1.6, 3.2 … s between them.
        assert 2 <= attempts <= 8


async def test_a_watch_refused_after_every_list_backs_off_and_never_re_lists(
    control_plane: Any, namespace: str
) -> None:
    """RBAC that allows ``list`` but not ``watch``: the old operator informer listed every object
    again every 0.25–0.5 s for ever."""
    control_plane.kubectl("create", "serviceaccount", "lister", "-n", namespace)
    control_plane.kubectl(
        "create", "role", "list-only", "-n", namespace, "--verb=get,list", f"--resource=workflowexecutions.{api.GROUP}"
    )
    control_plane.kubectl(
        "create",
        "rolebinding",
        "list-only",
        "-n",
        namespace,
        "--role=list-only",
        f"--serviceaccount={namespace}:lister",
    )
    kubeconfig = control_plane.kubeconfig_for_service_account(namespace, "lister")
    async with informing(kubeconfig, namespace) as (informer, _):
        started = time.monotonic()
        await eventually(lambda: informer.resumes >= 3, what="three refused watches")
        await asyncio.sleep(2)
        elapsed, resumes = time.monotonic() - started, informer.resumes
        assert informer.lists == 1
        # Refused watches are retried after 0.8, 1.6, 3.2 … s (jittered by up to as much again), so
        # however fast the machine, the attempts grow with the logarithm of the time, not with it.
        assert resumes <= 2 + elapsed / 0.8 and resumes <= 8, (resumes, elapsed)


async def test_a_client_follows_a_run_through_cut_connections(control_plane: Any, namespace: str) -> None:
    async with (
        proxy_for(control_plane) as proxy,
        KubestepClient(namespace, kubeconfig=str(control_plane.kubeconfig)) as admin,
        KubestepClient(namespace, kubeconfig=str(proxy.kubeconfig(control_plane.kubeconfig))) as client,
    ):
        await admin.start("steps", {"count": 1}, name="followed")
        labels: list[str] = []

        async def follow() -> None:
            async for execution in client.watch_execution("followed"):
                labels.append(execution.raw["metadata"].get("labels", {}).get("step", ""))
                if labels[-1] == "5":
                    return

        follower = asyncio.create_task(follow())
        await eventually(lambda: labels, what="the run's first state")
        async with Kube(str(control_plane.kubeconfig)) as kube:
            for i in range(1, 6):
                await kube.merge_patch(
                    api.execution_path(namespace, "followed"), {"metadata": {"labels": {"step": str(i)}}}
                )
                await asyncio.sleep(0.2)
                proxy.cut()
        await asyncio.wait_for(follower, 60)
        assert labels[-1] == "5" and proxy.cuts >= 3
        await kube_delete(control_plane, namespace, "followed")

        async def drain() -> None:
            async for _ in client.watch_execution("followed"):
                pass

        with pytest.raises(ExecutionNotFoundError):
            await asyncio.wait_for(drain(), 60)


async def kube_delete(control_plane: Any, namespace: str, name: str) -> None:
    async with Kube(str(control_plane.kubeconfig)) as kube:
        await kube.delete(api.execution_path(namespace, name))
