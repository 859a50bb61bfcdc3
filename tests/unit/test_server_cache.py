"""The shared cache's rules without a cluster: label selectors as the apiserver reads them, pages
and continue tokens over the cache, changes fanned out to streams (a slow one cut off), a complete
list dropping what it no longer holds, and access decisions kept for their time to live only.
Fed here by hand through the informer's own callbacks; tests/test_server.py feeds it from a real
apiserver."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from kubestep._informer import Change
from kubestep._kube import Kube
from kubestep_server import selectors
from kubestep_server.auth import Access
from kubestep_server.cache import BadContinue, Query, RunCache
from kubestep_server.errors import Problem


def run(name: str, ns: str = "a", *, rv: int = 1, created: str = "2026-12-02T10:00:00Z", **spec: Any) -> dict[str, Any]:
    labels = spec.pop("labels", {})
    phase = spec.pop("phase", "Queued")
    return {
        "apiVersion": "kubestep.io/v1alpha1",
        "kind": "WorkflowExecution",
        "metadata": {
            "name": name,
            "namespace": ns,
            "resourceVersion": str(rv),
            "creationTimestamp": created,
            "labels": labels,
            "uid": f"uid-{name}",
        },
        "spec": {"workflow": spec.pop("workflow", "etl"), **spec},
        "status": {"phase": phase},
    }


def fed(*objs: dict[str, Any], namespaces: tuple[str, ...] = ()) -> RunCache:
    cache = RunCache(Kube.__new__(Kube), namespaces)
    for obj in objs:
        cache._apply(Change("ADDED", obj, listed=True))
    return cache


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("team=data", {"team": "data"}, True),
        ("team==data", {"team": "web"}, False),
        ("team!=data", {}, True),
        ("team in (a, b),tier", {"team": "b", "tier": "1"}, True),
        ("team notin (a)", {"team": "a"}, False),
        ("!team", {"team": "a"}, False),
        ("example.com/app=x", {"example.com/app": "x"}, True),
        ("", {"any": "thing"}, True),
    ],
)
def test_label_selectors_match_as_the_apiservers(selector: str, labels: dict[str, str], matches: bool) -> None:
    assert selectors.parse(selector).matches(labels) is matches


@pytest.mark.parametrize("selector", ["team in ((", "a=b=c", "x,", "team in ()", "in (a", "Bad Key=x", "k=v v"])
def test_selectors_the_apiserver_refuses_are_refused(selector: str) -> None:
    with pytest.raises(selectors.SelectorError):
        selectors.parse(selector)


def test_pages_are_positions_in_the_order_and_tokens_are_checked() -> None:
    cache = fed(*(run(f"r{i}", created=f"2026-12-02T10:00:0{i}Z") for i in range(5)), run("x", "b"))
    first = cache.page("a", Query(), order="name", limit=2, continue_token=None)
    assert [json.loads(b)["id"] for b in first.bodies] == ["r0", "r1"] and first.continue_token
    cache._apply(Change("ADDED", run("r1a", rv=9)))  # created between two pages, after the position
    second = cache.page("a", Query(), order="name", limit=10, continue_token=first.continue_token)
    assert [json.loads(b)["id"] for b in second.bodies] == ["r1a", "r2", "r3", "r4"] and second.continue_token is None
    newest = cache.page("a", Query(), order="newest", limit=2, continue_token=None)
    assert [json.loads(b)["id"] for b in newest.bodies] == ["r4", "r3"]
    with pytest.raises(BadContinue):
        cache.page("a", Query(), order="name", limit=2, continue_token=newest.continue_token)  # another order
    for token in ("an-apiservers-token", "c1.!!!", "c1.e30"):
        with pytest.raises(BadContinue):
            cache.page("a", Query(), order="name", limit=2, continue_token=token)


def test_filters_apply_to_the_cached_runs() -> None:
    cache = fed(
        run("etl-1", labels={"team": "data"}),
        run("etl-2", phase="Running"),
        run("web-1", workflow="web"),
    )

    def names(query: Query) -> list[str]:
        return [
            json.loads(b)["id"] for b in cache.page("a", query, order="name", limit=100, continue_token=None).bodies
        ]

    assert names(Query(search="ETL")) == ["etl-1", "etl-2"]
    assert names(Query(workflow="web")) == ["web-1"]
    assert names(Query(phase="Running")) == ["etl-2"]
    assert names(Query(selectors.parse("team=data"))) == ["etl-1"]
    assert names(Query()) == ["etl-1", "etl-2", "web-1"]
    assert cache.page("b", Query(), order="name", limit=100, continue_token=None).bodies == []


async def test_changes_reach_matching_streams_and_a_slow_stream_is_cut_off() -> None:
    cache = fed(run("etl-1"))
    cache._queue_size = 2
    with cache.subscribe("a", Query(search="etl")) as etl, cache.subscribe("b", Query()) as other:
        cache._apply(Change("MODIFIED", run("etl-1", rv=2, phase="Running")))
        cache._apply(Change("ADDED", run("web-1", rv=3)))  # no match
        cache._apply(Change("MODIFIED", run("etl-1", rv=2, phase="Running"), listed=True))  # no news: same version
        message = etl.queue.get_nowait().decode()
        assert message.startswith("id: 2\nevent: change\ndata: ")
        data = json.loads(message.split("data: ", 1)[1])
        assert (data["type"], data["listed"], data["execution"]["status"]["phase"]) == ("MODIFIED", False, "Running")
        assert etl.queue.empty() and other.queue.empty()
        for rv in range(10, 14):
            cache._apply(Change("MODIFIED", run("etl-1", rv=rv)))
        assert etl.overflowed  # two queued, the rest would not fit: the stream ends and reconnects
    assert cache.subscribers() == 0


def test_a_complete_list_drops_what_it_no_longer_holds() -> None:
    cache = fed(run("r1"), run("r2"), run("r3", "b"), namespaces=())
    with cache.subscribe("a", Query()) as subscriber:
        cache._listed({("a", "r1"), ("b", "r3")})
        gone = json.loads(subscriber.queue.get_nowait().decode().split("data: ", 1)[1])
    assert (gone["type"], gone["execution"]["id"]) == ("DELETED", "r2")
    assert len(cache) == 2
    cache._apply(Change("DELETED", run("r1")))
    assert len(cache) == 1


def test_a_cache_of_named_namespaces_covers_only_those() -> None:
    cache = fed(namespaces=("a",))
    assert cache.covers("a") and not cache.covers("b")
    assert not cache.ready("a")  # not listed yet: requests go to the apiserver
    assert not cache.ready("b")
    cache._scopes[0].informer.listed.set()
    assert cache.ready("a")


class FakeKube:
    def __init__(self, allowed: bool) -> None:
        self.allowed = allowed
        self.calls: list[str] = []

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(path.rsplit("/", 1)[-1])
        if path.endswith("selfsubjectreviews"):
            return {"status": {"userInfo": {"username": "system:serviceaccount:a:bob"}}}
        return {"status": {"allowed": self.allowed}}


class FakeClients:
    def __init__(self, kube: FakeKube) -> None:
        self.kube = kube

    def lease(self, token: str) -> Any:
        kube = self.kube

        class Lease:
            async def __aenter__(self) -> FakeKube:
                return kube

            async def __aexit__(self, *exc: object) -> None:
                return None

        return Lease()


async def test_access_decisions_are_kept_for_their_time_to_live_only() -> None:
    now = [0.0]
    kube = FakeKube(allowed=True)
    access = Access(FakeClients(kube), ttl=10, clock=lambda: now[0])  # type: ignore[arg-type]
    await access.require("t1", "list", "a")
    await access.require("t1", "list", "a")
    assert kube.calls == ["selfsubjectaccessreviews"] and access.reviews == 1
    kube.allowed = False
    now[0] = 10.5  # expired: asked again, and now refused, naming the user as kubectl would
    with pytest.raises(Problem) as refused:
        await access.require("t1", "list", "a")
    assert refused.value.status == 403
    assert 'User "system:serviceaccount:a:bob" cannot list resource "workflowexecutions"' in refused.value.message
    with pytest.raises(Problem):
        await access.require("t1", "list", "a")  # the refusal is kept too
    assert access.reviews == 2
    access.forget("t1")
    with pytest.raises(Problem):
        await access.require("t1", "list", "a")
    assert access.reviews == 3
    await asyncio.sleep(0)
