"""``KubestepClient.watch_execution`` and ``watch_executions`` over a scripted apiserver (the informer
tests' ``Script``): what a caller sees when the watch expires and the next list no longer holds a run."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from kubestep import ExecutionChange, ExecutionNotFoundError, KubestepClient

from .test_informer import Clock, Finished, Script, event, gone_event


def client_over(steps: list[tuple[Any, ...]]) -> KubestepClient:
    client = KubestepClient.__new__(KubestepClient)  # no kubeconfig: the transport is the script
    client._kube = Script(Clock(), steps)  # type: ignore[assignment]
    client.namespace = "ns"
    return client


async def test_a_namespace_follower_hears_of_a_run_deleted_while_its_watch_had_expired() -> None:
    client = client_over(
        [
            ("list", ["a", "b"], "10"),
            ("watch", [event("MODIFIED", "a", "11"), gone_event()]),
            ("list", ["a"], "20"),  # b was deleted meanwhile: no DELETED event will ever say so
            ("watch", [event("ADDED", "c", "21"), event("DELETED", "c", "22")]),
        ]
    )
    seen: list[tuple[str, str, bool]] = []

    async def follow() -> None:
        change: ExecutionChange
        async for change in client.watch_executions():
            seen.append((change.kind, change.execution.id, change.listed))

    with contextlib.suppress(Finished):
        await follow()
    assert seen == [
        ("ADDED", "a", True),
        ("ADDED", "b", True),
        ("MODIFIED", "a", False),
        ("ADDED", "a", True),
        ("DELETED", "b", False),
        ("ADDED", "c", False),
        ("DELETED", "c", False),
    ]


async def test_following_a_run_that_does_not_exist_says_so() -> None:
    client = client_over([("list", [], "10")])
    with pytest.raises(ExecutionNotFoundError, match="does not exist"):
        async for _ in client.watch_execution("a"):
            pass


async def test_following_a_run_ends_when_it_is_deleted_even_unseen_by_the_watch() -> None:
    client = client_over(
        [("list", ["a"], "10"), ("watch", [event("MODIFIED", "a", "11"), gone_event()]), ("list", [], "30")]
    )
    states: list[str] = []
    with pytest.raises(ExecutionNotFoundError, match="was deleted"):
        async for execution in client.watch_execution("a"):
            states.append(execution.raw["metadata"]["resourceVersion"])
    assert states == ["10", "11"]


class Events:
    """An apiserver holding one run and its Events, listed by name as the apiserver lists them."""

    def __init__(self, events: list[tuple[str, str, str]]) -> None:  # (name, time, resourceVersion)
        self.events = events

    async def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        if path.endswith("/events"):
            items = [
                {"metadata": {"name": n, "resourceVersion": rv}, "reason": n, "lastTimestamp": t}
                for n, t, rv in sorted(self.events)
            ]
            return {"items": items}
        return {"metadata": {"name": "r", "namespace": "ns", "uid": "u"}}


async def test_events_in_the_same_second_come_in_the_order_they_were_written() -> None:
    client = KubestepClient.__new__(KubestepClient)
    client._kube = Events(  # type: ignore[assignment]
        [
            ("a-started", "2026-12-02T15:25:42Z", "120"),  # by name it would come first
            ("b-queued", "2026-12-02T15:25:42Z", "119"),
            ("z-earlier", "2026-12-02T15:25:41Z", "121"),
            ("c-completed", "2026-12-02T15:25:43Z", "118"),
        ]
    )
    client.namespace = "ns"
    assert [e.reason for e in await client.events("r")] == ["z-earlier", "b-queued", "a-started", "c-completed"]
