"""``kubestep server`` (the HTTP API, docs/api.md) on the real control plane, with real tokens of
ServiceAccounts bound to different Roles: the server acts as its caller, so the apiserver authorizes
each request exactly as it would the caller's kubectl.

The server runs in this process (aiohttp's ``TestServer`` on a loopback port) with the session's
admin kubeconfig, which authenticates with a client certificate: were that certificate presented
with the callers' requests, the apiserver would take it over their tokens and every refusal below
would be a success. One test runs the ``kubestep server`` command itself. The same rules without a
cluster: ``tests/unit/test_server_*.py``.

The RBAC matrix (namespace A holds the bindings; B holds none of them):

| token          | Role in A                          | in A                         | in B |
|----------------|------------------------------------|------------------------------|------|
| reader         | get, list, watch                   | read and stream; cancel: 403 | 403  |
| canceller      | get, list, watch, patch            | read, stream, cancel         | 403  |
| writer         | + create; list Events              | everything                   | 403  |
| none, garbage, revoked | —                          | 401                          | 401  |
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kubestep import KubestepClient
from kubestep._kube import Kube
from kubestep_server import sse
from kubestep_server.app import make_app
from kubestep_server.cache import Query, RunCache
from kubestep_server.context import CACHE, TOKENS
from kubestep_server.settings import ServerSettings

from .conftest import Cluster
from .harness import E2E, Proc, free_port, until, until_phase, wait_until
from .security import test_cancel_audit as cancel_audit

pytestmark = pytest.mark.skipif(E2E, reason="runs the server in this process, and operators of its own")

# The chart's cancel-audit policies, installed for one test (tests/security/test_cancel_audit.py).
audit = cancel_audit.audit

NOBODY = "nobody-serves-this"  # a workflow no worker serves: its runs stay Queued until cancelled
WFX = "workflowexecutions.kubestep.io"

# ----- the seed's call, verbatim but for the base URL ------------------------------------------------

BASE = ""  # the server under test, set before each use


# fmt: off
async def cancel_workflow_api(execution_id: str, api_key: str):
    """Cancel workflow via API."""
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{BASE}/api/v1/executions/{execution_id}/cancel",
            headers={
                "Authorization": f"Bearer {api_key}",
                "Content-Type": "application/json"
            }
        )

        if response.status_code == 200:
            return True
        elif response.status_code == 404:
            print(f"Execution not found: {execution_id}")
            return False
        else:
            response.raise_for_status()
# fmt: on


# ----- fixtures -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Served:
    url: str
    app: web.Application

    def headers(self, token: str | None, **more: str) -> dict[str, str]:
        return {**({"Authorization": f"Bearer {token}"} if token else {}), "Content-Type": "application/json", **more}

    def http(self, token: str | None = None, timeout: float = 30) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers(token), timeout=timeout)

    @property
    def clients_made(self) -> int:
        return self.app[TOKENS].made


@pytest.fixture
async def serve(control_plane: Cluster) -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    """Starts servers on loopback ports (``serve(namespace, **settings)``); stops them after the test."""
    started: list[TestServer] = []

    async def start(namespace: str, **settings: Any) -> Served:
        """With ``cache_namespaces`` (``()``: every namespace), the shared cache, fed by the session's
        admin credentials (the chart gives the server's ServiceAccount get/list/watch instead);
        returns once it has listed."""
        app = make_app(ServerSettings(namespace=namespace, **settings), Kube(str(control_plane.kubeconfig)))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        started.append(server)
        if CACHE in app:
            await until(lambda: _ready(app[CACHE], namespace), 60, "the server's cache to list the runs")
        return Served(str(server.make_url("")).rstrip("/"), app)

    yield start
    for server in started:
        await server.close()


async def _ready(cache: RunCache, namespace: str) -> bool:
    if cache.ready(namespace):
        return True
    await asyncio.sleep(0.1)
    return False


#: Both ways a list is answered: by the apiserver with the caller's token, and from the shared cache
#: after the apiserver authorized the caller. The rules below hold for both.
BOTH = pytest.mark.parametrize("cache", [None, ()], ids=["passthrough", "cache"])


@dataclasses.dataclass
class Accounts:
    namespace: str
    reader: str
    canceller: str
    writer: str

    def user(self, name: str) -> str:
        return f"system:serviceaccount:{self.namespace}:{name}"


def _token(cluster: Cluster, namespace: str, account: str, *extra: str) -> str:
    return cluster.kubectl("-n", namespace, "create", "token", account, "--duration=1h", *extra).stdout.strip()


def make_accounts(cluster: Cluster, ns: str) -> Accounts:
    """Three ServiceAccounts of ``ns`` bound to three Roles there, and a token of each."""
    verbs = {"reader": "get,list,watch", "canceller": "get,list,watch,patch", "writer": "get,list,watch,patch,create"}
    for name, allowed in verbs.items():
        cluster.kubectl("-n", ns, "create", "serviceaccount", name)
        cluster.kubectl("-n", ns, "create", "role", name, f"--verb={allowed}", f"--resource={WFX}")
        cluster.kubectl("-n", ns, "create", "rolebinding", name, f"--role={name}", f"--serviceaccount={ns}:{name}")
    cluster.kubectl("-n", ns, "create", "role", "events", "--verb=list", "--resource=events")
    cluster.kubectl("-n", ns, "create", "rolebinding", "events", "--role=events", f"--serviceaccount={ns}:writer")
    return Accounts(ns, *(_token(cluster, ns, name) for name in verbs))


@pytest.fixture
def accounts(control_plane: Cluster, run_namespace: str) -> Accounts:
    return make_accounts(control_plane, run_namespace)


@pytest.fixture
def quiet_namespace(control_plane: Cluster) -> Iterator[str]:
    """A namespace no operator watches (the session's watches ``t-*``): its runs keep no phase, so a
    run stays as a test left it."""
    name = f"srv-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture
async def admin(control_plane: Cluster, run_namespace: str, operator: Any) -> AsyncIterator[KubestepClient]:
    async with KubestepClient(namespace=run_namespace, kubeconfig=str(control_plane.kubeconfig)) as client:
        yield client


async def _start(cluster: Cluster, namespace: str, workflow: str = NOBODY) -> str:
    async with KubestepClient(namespace=namespace, kubeconfig=str(cluster.kubeconfig)) as client:
        return (await client.start(workflow, {"n": 1})).id


def _spec(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(json.loads(cluster.kubectl("-n", namespace, "get", "wfx", name, "-o", "json").stdout)["spec"])


class Stream:
    """An open SSE stream, read message by message (comments included, as ``{"comment": ...}``)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._chunks = response.aiter_text()
        self._buffer = ""
        self._ready: list[dict[str, str]] = []

    async def next(self, timeout: float = 60) -> dict[str, str]:
        async def read() -> dict[str, str]:
            while not self._ready:
                self._buffer += await anext(self._chunks)
                complete, sep, self._buffer = self._buffer.rpartition("\n\n")
                if sep:
                    self._ready.extend(sse.parse(complete + sep))
            return self._ready.pop(0)

        return await asyncio.wait_for(read(), timeout)

    async def until(self, event: str, timeout: float = 60) -> list[dict[str, str]]:
        """The messages up to and including the first ``event`` one."""
        seen: list[dict[str, str]] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            message = await self.next(max(0.1, end - loop.time()))
            seen.append(message)
            if message.get("event") == event:
                return seen


async def refused_stream(http: httpx.AsyncClient, path: str) -> httpx.Response:
    """A stream's answer when it is expected to be refused: read whole, within a bound (a stream that
    was not refused would otherwise be read for ever, its heartbeats keeping it alive)."""
    return await asyncio.wait_for(http.get(path), 30)


@contextlib.asynccontextmanager
async def stream(served: Served, token: str | None, path: str, **headers: str) -> AsyncIterator[Stream]:
    async with (
        served.http(token, timeout=120) as http,
        http.stream("GET", path, headers={"Accept": "text/event-stream", **headers}) as response,
    ):
        yield Stream(response)


# ----- the seed's snippet, and cancel's answers ------------------------------------------------------


async def test_the_seeds_snippet_cancels_a_run_reports_a_missing_one_and_a_finished_one(
    control_plane: Cluster,
    run_namespace: str,
    admin: KubestepClient,
    accounts: Accounts,
    serve: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    global BASE
    served = await serve(run_namespace)  # the seed's URL names no namespace: the server's --namespace
    BASE = served.url
    name = await _start(control_plane, run_namespace)
    await until_phase(admin, name, "Queued")

    assert await cancel_workflow_api(name, accounts.canceller) is True
    done = await until_phase(admin, name, "Cancelled")
    assert done.status.cancellation is not None and done.status.cancellation.requested_by == "kubestep-server"

    assert await cancel_workflow_api("no-such-run", accounts.canceller) is False
    assert "Execution not found: no-such-run" in capsys.readouterr().out

    with pytest.raises(httpx.HTTPStatusError) as finished:  # the snippet's raise_for_status()
        await cancel_workflow_api(name, accounts.canceller)
    assert finished.value.response.status_code == 409
    assert finished.value.response.json() == {
        "execution_id": name,
        "namespace": run_namespace,
        "status": "Cancelled",
        "error": f"execution {name} already finished (Cancelled): there is nothing to cancel",
        "reason": "AlreadyFinished",
    }


async def test_a_cancel_says_when_and_why_and_repeating_it_changes_nothing(
    control_plane: Cluster, quiet_namespace: str, serve: Any
) -> None:
    ns = quiet_namespace
    accounts = make_accounts(control_plane, ns)
    served = await serve(ns)
    name = await _start(control_plane, ns)
    async with served.http(accounts.canceller) as http:
        first = await http.post(
            f"/api/v1/executions/{name}/cancel", json={"reason": "wrong input", "grace_period_seconds": 5}
        )
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["execution_id"] == name and body["namespace"] == ns and body["cancel_requested"] is True
        assert body["reason"] == "wrong input" and body["cancelled_at"].endswith("Z")
        again = await http.post(f"/api/v1/executions/{name}/cancel", json={"reason": "changed my mind"})
        assert again.status_code == 200, again.text
        assert again.json()["reason"] == "wrong input" and again.json()["cancelled_at"] == body["cancelled_at"]
        shown = (await http.get(f"/api/v1/executions/{name}")).json()
    spec = _spec(control_plane, ns, name)
    assert (spec["cancelRequested"], spec["cancelReason"], spec["cancelGracePeriodSeconds"]) == (True, "wrong input", 5)
    assert shown["cancel_requested"] is True and shown["cancellation"]["requested_by"] == "kubestep-server"


# ----- RBAC: the server refuses what kubectl refuses ------------------------------------------------


async def test_a_get_only_token_is_refused_cancel_exactly_as_kubectl_is(
    control_plane: Cluster, quiet_namespace: str, serve: Any
) -> None:
    ns = quiet_namespace
    accounts = make_accounts(control_plane, ns)
    served = await serve(ns)
    name = await _start(control_plane, ns)
    async with served.http(accounts.reader) as http:
        assert (await http.get(f"/api/v1/executions/{name}")).status_code == 200  # it may read
        refused = await http.post(f"/api/v1/executions/{name}/cancel", json={"reason": "x"})
    assert refused.status_code == 403, refused.text
    assert refused.json()["reason"] == "Forbidden"

    reader = control_plane.kubeconfig_for_service_account(ns, "reader")
    patch = json.dumps({"spec": {"cancelRequested": True, "cancelReason": "x"}})
    by_kubectl = control_plane.kubectl(
        "-n", ns, "patch", "wfx", name, "--type=merge", "-p", patch, kubeconfig=reader, check=False
    )
    assert by_kubectl.returncode != 0
    # The same refusal, word for word: the apiserver's own.
    assert f"Error from server (Forbidden): {refused.json()['error']}" in by_kubectl.stderr, by_kubectl.stderr
    assert f'User "{accounts.user("reader")}" cannot patch resource "workflowexecutions"' in refused.json()["error"]
    assert not _spec(control_plane, ns, name).get("cancelRequested")


@BOTH
async def test_no_token_a_garbage_token_and_a_revoked_token_are_401s(
    control_plane: Cluster, quiet_namespace: str, serve: Any, cache: tuple[str, ...] | None
) -> None:
    ns = quiet_namespace
    make_accounts(control_plane, ns)
    served = await serve(ns, cache_namespaces=cache)
    name = await _start(control_plane, ns)
    async with served.http(None) as http:
        for method, path in (("GET", "/api/v1/executions"), ("POST", f"/api/v1/executions/{name}/cancel")):
            answer = await http.request(method, path)
            assert answer.status_code == 401 and answer.headers["WWW-Authenticate"].startswith("Bearer"), answer.text
    assert served.clients_made == 0  # nothing was asked of the apiserver, not even with the server's own identity

    async with served.http("garbage.token.value") as http:
        garbage = await http.post(f"/api/v1/executions/{name}/cancel")
    assert garbage.status_code == 401 and garbage.json()["reason"] == "Unauthorized", garbage.text
    assert served.clients_made == 1 and len(served.app[TOKENS]) == 0  # asked, refused, forgotten
    async with served.http("garbage.token.value") as http:
        listed = await http.get("/api/v1/executions")  # from the cache too: only once the apiserver took the token
    assert listed.status_code == 401 and listed.json()["reason"] == "Unauthorized", listed.text
    assert "items" not in listed.json()

    # A token bound to a Secret stops being valid when the Secret goes: revoked, as an expired one is.
    secret = f"bound-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("-n", ns, "create", "secret", "generic", secret)
    uid = control_plane.kubectl("-n", ns, "get", "secret", secret, "-o", "jsonpath={.metadata.uid}").stdout
    bound = _token(
        control_plane,
        ns,
        "canceller",
        "--bound-object-kind=Secret",
        f"--bound-object-name={secret}",
        f"--bound-object-uid={uid}",
    )
    async with served.http(bound) as http:
        assert (await http.get(f"/api/v1/executions/{name}")).status_code == 200
        control_plane.kubectl("-n", ns, "delete", "secret", secret)

        async def refused() -> bool:  # the apiserver caches a token's review for a few seconds
            return (await http.get(f"/api/v1/executions/{name}")).status_code == 401

        await until(refused, 60, "the revoked token to be refused")
        assert (await http.post(f"/api/v1/executions/{name}/cancel")).status_code == 401
    assert not _spec(control_plane, ns, name).get("cancelRequested")


@BOTH
async def test_a_token_of_namespace_a_can_neither_see_nor_touch_namespace_b(
    control_plane: Cluster, make_namespace: Callable[[], str], serve: Any, cache: tuple[str, ...] | None
) -> None:
    a, b = make_namespace(), make_namespace()
    accounts = make_accounts(control_plane, a)
    in_b = await _start(control_plane, b)
    served = await serve(b, cache_namespaces=cache)  # B is even the server's default namespace
    if cache is not None:  # the cache holds B's run: it must still not be shown
        await until(lambda: _cached(served, b, in_b), 30, "the cache to hold B's run")
    q = f"?namespace={b}"
    async with served.http(accounts.writer) as http:
        answers = {
            "list": await http.get(f"/api/v1/executions{q}"),
            "list (default namespace)": await http.get("/api/v1/executions"),
            "get": await http.get(f"/api/v1/executions/{in_b}{q}"),
            "steps": await http.get(f"/api/v1/executions/{in_b}/steps{q}"),
            "events": await http.get(f"/api/v1/executions/{in_b}/events{q}"),
            "cancel": await http.post(f"/api/v1/executions/{in_b}/cancel{q}", json={"reason": "x"}),
            "send event": await http.post(f"/api/v1/executions/{in_b}/events{q}", json={"topic": "t"}),
            "run": await http.post(f"/api/v1/workflows/{NOBODY}/run{q}", json={}),
            "stream a run": await refused_stream(http, f"/api/v1/executions/{in_b}/stream{q}"),
            "stream the namespace": await refused_stream(http, f"/api/v1/executions{q}&watch=true"),
            "a missing run": await http.get(f"/api/v1/executions/no-such-run{q}"),
            "bulk cancel by name": await http.post(f"/api/v1/executions/cancel{q}", json={"names": [in_b]}),
            "bulk cancel by filter": await http.post(f"/api/v1/executions/cancel{q}", json={"filter": {}}),
        }
        bulk = answers.pop("bulk cancel by name")
        assert bulk.status_code == 200 and [r["status"] for r in bulk.json()["results"]] == [403], bulk.text
        for what, answer in answers.items():
            assert answer.status_code == 403 and answer.json()["reason"] == "Forbidden", (what, answer.text)
            if what.startswith(("list", "stream the namespace", "bulk cancel by filter")):  # names no run itself
                assert in_b not in answer.text, (what, answer.text)
        assert f'User "{accounts.user("writer")}" cannot list' in answers["list"].json()["error"]
        own = await http.get(f"/api/v1/executions?namespace={a}")
        assert own.status_code == 200 and own.json()["items"] == []  # its own: fine
    assert not _spec(control_plane, b, in_b).get("cancelRequested")
    assert control_plane.kubectl("-n", b, "get", "wfx", "-o", "name").stdout.split() == [
        f"workflowexecution.kubestep.io/{in_b}"
    ]


# ----- start, list, send an event, read the steps and Events ----------------------------------------


async def _cached(served: Served, namespace: str, name: str) -> bool:
    if any(e.name == name for e in served.app[CACHE].matching(namespace, Query())):
        return True
    await asyncio.sleep(0.1)
    return False


async def listed_eventually(http: httpx.AsyncClient, expected: int, **params: Any) -> dict[str, Any]:
    """The list once it holds ``expected`` runs: the cache follows the apiserver by a watch event."""

    async def enough() -> dict[str, Any] | None:
        answer = await http.get("/api/v1/executions", params=params)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        if len(body["items"]) == expected:
            return body
        await asyncio.sleep(0.1)
        return None

    return await until(enough, 30, f"the list {params} to hold {expected} runs")


@BOTH
async def test_start_list_filter_page_and_send_an_event(
    control_plane: Cluster,
    run_namespace: str,
    admin: KubestepClient,
    accounts: Accounts,
    serve: Any,
    cache: tuple[str, ...] | None,
) -> None:
    served = await serve(run_namespace, cache_namespaces=cache)
    async with served.http(accounts.writer) as http:
        made = await http.post(
            f"/api/v1/workflows/{NOBODY}/run",
            json={
                "payload": {"day": "2026-12-02"},
                "run_timeout_seconds": 60,
                "labels": {"team": "data"},
                "ttl_seconds_after_finished": 3600,
            },
        )
        assert made.status_code == 201, made.text
        first = made.json()["execution_id"]
        assert made.headers["Location"] == f"/api/v1/executions/{first}?namespace={run_namespace}"
        other = await http.post("/api/v1/workflows/other-workflow/run", json={"name": "named-run", "queue": "gpu"})
        assert other.status_code == 201 and other.json()["execution_id"] == "named-run", other.text

        listed = await listed_eventually(http, 2)
        assert sorted(e["id"] for e in listed["items"]) == sorted([first, "named-run"]) and listed["continue"] is None
        source = (await http.get("/api/v1/executions")).headers["X-Kubestep-Source"]
        assert source == ("apiserver" if cache is None else "cache")
        run = next(e for e in listed["items"] if e["id"] == first)
        assert run["input"] == {"day": "2026-12-02"} and run["run_timeout_seconds"] == 60
        assert run["ttl_seconds_after_finished"] == 3600
        assert run["labels"]["team"] == "data" and run["resource_version"]
        by_workflow = (await http.get("/api/v1/executions", params={"workflow": NOBODY})).json()["items"]
        assert [e["id"] for e in by_workflow] == [first]
        by_label = (await http.get("/api/v1/executions", params={"labelSelector": "team=data"})).json()["items"]
        assert [e["id"] for e in by_label] == [first]
        await until_phase(admin, first, "Queued")
        await until_phase(admin, "named-run", "Queued")
        await listed_eventually(http, 2, phase="Queued")
        assert (await http.get("/api/v1/executions", params={"phase": "Completed"})).json()["items"] == []
        page = (await http.get("/api/v1/executions", params={"limit": 1})).json()
        assert len(page["items"]) == 1 and page["continue"]
        rest = (await http.get("/api/v1/executions", params={"limit": 1, "continue": page["continue"]})).json()
        assert {page["items"][0]["id"], rest["items"][0]["id"]} == {first, "named-run"} and rest["continue"] is None
        searched = (await http.get("/api/v1/executions", params={"search": "NAMED"})).json()["items"]
        assert [e["id"] for e in searched] == ["named-run"]
        newest = (await http.get("/api/v1/executions", params={"order": "newest"})).json()["items"]
        assert [e["id"] for e in newest] == sorted(
            [first, "named-run"],
            key=lambda n: (next(e["created_at"] for e in listed["items"] if e["id"] == n), n),
            reverse=True,
        )

        # The apiserver's own validation: a 422 with its message.
        invalid = await http.post(f"/api/v1/workflows/{NOBODY}/run", json={"run_timeout_seconds": 0})
        assert invalid.status_code == 422 and invalid.json()["reason"] == "Invalid", invalid.text
        assert "runTimeoutSeconds" in invalid.json()["error"]
        bad_selector = await http.get("/api/v1/executions", params={"labelSelector": "team in (("})
        assert bad_selector.status_code == 400, bad_selector.text

        sent = await http.post(
            f"/api/v1/executions/{first}/events", json={"topic": "approve", "data": {"ok": True}, "name": "e1"}
        )
        assert sent.status_code == 201 and sent.json()["event"] == "e1", sent.text
        twice = await http.post(f"/api/v1/executions/{first}/events", json={"topic": "approve", "name": "e1"})
        assert twice.status_code == 422, twice.text  # the same name twice is refused: a retried send is safe
        shown = (await http.get(f"/api/v1/executions/{first}")).json()
        assert shown["events"] == [{"name": "e1", "topic": "approve", "data": {"ok": True}}]

        missing = await http.get("/api/v1/executions/no-such-run")
        assert missing.status_code == 404 and missing.json()["reason"] == "NotFound"


# ----- the shared cache ---------------------------------------------------------------------------


async def test_the_cache_answers_lists_and_streams_only_to_callers_the_apiserver_lets_list(
    control_plane: Cluster, quiet_namespace: str, make_namespace: Callable[[], str], serve: Any
) -> None:
    """One watch (the server's own) answers every list and namespace stream; each caller is still
    authorized by the apiserver first, with its own token, and a removed RoleBinding takes effect
    within the decision's time to live."""
    ns, other = quiet_namespace, make_namespace()
    accounts = make_accounts(control_plane, ns)
    control_plane.kubectl("-n", ns, "create", "serviceaccount", "stranger")
    stranger = _token(control_plane, ns, "stranger")
    in_other = await _start(control_plane, other)
    async with KubestepClient(namespace=ns, kubeconfig=str(control_plane.kubeconfig)) as admin:
        for i in range(5):
            await admin.start(NOBODY, {"i": i}, name=f"run-{i}", labels={"team": "a" if i % 2 else "b"})
        await admin.start("etl", {}, name="stream")  # a run with the name the old stream route took
    served = await serve(ns, cache_namespaces=(), access_ttl_seconds=1, recheck_seconds=1, heartbeat_seconds=0.5)
    cache: RunCache = served.app[CACHE]
    await until(lambda: _cached(served, other, in_other), 30, "the cache to hold the other namespace's run")
    async with served.http(accounts.reader) as http:
        listed = await listed_eventually(http, 6)
        assert (await http.get("/api/v1/executions")).headers["X-Kubestep-Source"] == "cache"
        assert all(isinstance(e["cache_seq"], int) for e in listed["items"])
        assert in_other not in json.dumps(listed)
        assert [
            e["id"] for e in (await http.get("/api/v1/executions", params={"workflow": "etl"})).json()["items"]
        ] == ["stream"]
        team_a = await http.get("/api/v1/executions", params={"labelSelector": "team in (a),team!=b"})
        assert [e["id"] for e in team_a.json()["items"]] == ["run-1", "run-3"]
        assert (await http.get("/api/v1/executions", params={"labelSelector": "team in (("})).status_code == 400
        # Pages over the cache: positions in the order, three of them for 2 + 2 + 2.
        seen, token, pages = [], None, 0
        while True:
            params = {"limit": 2, **({"continue": token} if token else {})}
            page = (await http.get("/api/v1/executions", params=params)).json()
            seen += [e["id"] for e in page["items"]]
            pages, token = pages + 1, page["continue"]
            if token is None:
                break
        assert seen == sorted(seen) and len(seen) == 6 and pages == 3
        foreign = await http.get("/api/v1/executions", params={"continue": "not-ours"})
        assert foreign.status_code == 410 and foreign.json()["reason"] == "Expired"
        # The run named "stream" is reachable by its plain GET.
        named = await http.get("/api/v1/executions/stream")
        assert named.status_code == 200 and named.json()["id"] == "stream", named.text

        # The namespace's stream from the cache: the runs as they are, then a change made now.
        async with stream(served, accounts.reader, "/api/v1/executions?watch=true&search=run-") as changes:
            assert (await changes.next()) == {"retry": "3000"}
            snapshot = [json.loads((await changes.next())["data"]) for _ in range(5)]
            assert sorted(c["execution"]["id"] for c in snapshot) == [f"run-{i}" for i in range(5)]
            assert all(c["listed"] and c["type"] == "ADDED" for c in snapshot)
            assert cache.subscribers() == 1
            await _start(control_plane, ns, NOBODY)  # named nobody-serves-this-…: not a match
            control_plane.kubectl("-n", ns, "label", "wfx", "run-0", "touched=yes")
            message = await changes.next()
            while "comment" in message:
                message = await changes.next()
            change = json.loads(message["data"])
            assert (change["type"], change["execution"]["id"]) == ("MODIFIED", "run-0"), change
            assert change["execution"]["labels"]["touched"] == "yes"
            assert change["execution"]["cache_seq"] > max(e["cache_seq"] for e in listed["items"])

    async def subscriber_gone() -> bool:
        await asyncio.sleep(0.1)
        return cache.subscribers() == 0

    await until(subscriber_gone, 10, "the stream's subscription to end")

    async with served.http(stranger) as http:
        refused = await http.get("/api/v1/executions")
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"] == (
            f'workflowexecutions.kubestep.io is forbidden: User "system:serviceaccount:{ns}:stranger" cannot list '
            f'resource "workflowexecutions" in API group "kubestep.io" in the namespace "{ns}"'
        )
        by_kubectl = control_plane.kubectl(
            "-n", ns, "get", "wfx", kubeconfig=control_plane.kubeconfig_for_service_account(ns, "stranger"), check=False
        )
        assert f"Error from server (Forbidden): {refused.json()['error']}" in by_kubectl.stderr, by_kubectl.stderr
        assert (await refused_stream(http, "/api/v1/executions?watch=true")).status_code == 403

    async with (
        stream(served, accounts.reader, "/api/v1/executions?watch=true&snapshot=false") as open_stream,
        served.http(accounts.reader) as http,
    ):
        assert (await open_stream.next()) == {"retry": "3000"}
        control_plane.kubectl("-n", ns, "delete", "rolebinding", "reader")
        ended = await open_stream.until("error", timeout=60)  # the stream asks again, and is refused
        assert json.loads(ended[-1]["data"])["reason"] == "Forbidden", ended[-1]

        async def refused_now() -> bool:
            await asyncio.sleep(0.2)
            return (await http.get("/api/v1/executions")).status_code == 403

        await until(refused_now, 30, "the removed binding to take effect on the cache's answers")


async def test_bulk_cancel_cancels_each_run_with_the_callers_token(
    control_plane: Cluster, quiet_namespace: str, serve: Any
) -> None:
    ns = quiet_namespace
    accounts = make_accounts(control_plane, ns)
    async with KubestepClient(namespace=ns, kubeconfig=str(control_plane.kubeconfig)) as admin:
        for name in ("etl-1", "etl-2", "etl-3", "web-1"):
            await admin.start(NOBODY, {}, name=name)
    served = await serve(ns, cache_namespaces=(ns,))
    async with served.http(accounts.reader) as http:
        refused = await http.post("/api/v1/executions/cancel", json={"names": ["etl-1", "etl-2"], "reason": "x"})
    assert refused.status_code == 200, refused.text
    assert [(r["execution_id"], r["status"]) for r in refused.json()["results"]] == [("etl-1", 403), ("etl-2", 403)]
    assert refused.json()["cancelled"] == 0 and not _spec(control_plane, ns, "etl-1").get("cancelRequested")

    async with served.http(accounts.canceller) as http:
        named = await http.post(
            "/api/v1/executions/cancel", json={"names": ["etl-1", "no-such-run"], "reason": "runaway spend"}
        )
        assert named.status_code == 200, named.text
        results = {r["execution_id"]: r for r in named.json()["results"]}
        assert results["etl-1"]["status"] == 200 and results["etl-1"]["cancelled_at"].endswith("Z")
        assert results["no-such-run"]["status"] == 404 and results["no-such-run"]["reason"] == "NotFound"
        assert (named.json()["requested"], named.json()["cancelled"], named.json()["failed"]) == (2, 1, 1)

        await until(lambda: _cached_spec(served, ns, "etl-1"), 30, "the cache to see etl-1's cancel")
        matching = await http.post(
            "/api/v1/executions/cancel", json={"filter": {"search": "etl"}, "reason": "the etl batch is wrong"}
        )
        assert matching.status_code == 200, matching.text
        assert sorted(r["execution_id"] for r in matching.json()["results"]) == ["etl-1", "etl-2", "etl-3"]
        for bad in (
            {"names": ["etl-1"], "filter": {}},  # both
            {},  # neither
            {"names": ["../secrets"]},
            {"filter": {"phase": "Completed"}},  # finished runs: nothing to cancel
            {"filter": {"label_selector": "a in (("}},
        ):
            answer = await http.post("/api/v1/executions/cancel", json=bad)
            assert answer.status_code == 400, (bad, answer.text)
    for name in ("etl-1", "etl-2", "etl-3"):
        spec = _spec(control_plane, ns, name)
        assert spec["cancelRequested"] is True, name
    assert _spec(control_plane, ns, "etl-1")["cancelReason"] == "runaway spend"  # the first reason is kept
    assert _spec(control_plane, ns, "etl-2")["cancelReason"] == "the etl batch is wrong"
    assert not _spec(control_plane, ns, "web-1").get("cancelRequested")


async def _cached_spec(served: Served, namespace: str, name: str) -> bool:
    entry = next((e for e in served.app[CACHE].matching(namespace, Query(search=name)) if e.name == name), None)
    if entry is not None and json.loads(entry.body)["cancel_requested"]:
        return True
    await asyncio.sleep(0.1)
    return False


# ----- live streams ---------------------------------------------------------------------------------


async def test_a_runs_stream_delivers_its_states_until_end_and_the_namespace_stream_its_changes(
    control_plane: Cluster, run_namespace: str, workers: Any, accounts: Accounts, serve: Any
) -> None:
    workers()
    # Short heartbeats and re-checks, so that both happen during the test.
    served = await serve(run_namespace, heartbeat_seconds=0.5, recheck_seconds=1)
    async with stream(served, accounts.reader, "/api/v1/executions?watch=true") as changes:
        assert changes.response.status_code == 200
        assert changes.response.headers["Content-Type"].startswith("text/event-stream")
        assert changes.response.headers["Cache-Control"] == "no-store"
        assert (await changes.next()) == {"retry": "3000"}
        assert (await changes.next()) == {"comment": "ping"}  # nothing in the namespace yet: a heartbeat

        async with served.http(accounts.writer) as http:
            made = await http.post("/api/v1/workflows/steps/run", json={"payload": {"count": 3, "seconds": 0.2}})
        assert made.status_code == 201, made.text
        name = made.json()["execution_id"]

        async with stream(served, accounts.reader, f"/api/v1/executions/{name}/stream") as states:
            messages = await states.until("end", timeout=90)
        assert messages[0] == {"retry": "3000"}
        executions = [m for m in messages if m.get("event") == "execution"]
        data = [json.loads(m["data"]) for m in executions]
        assert all(d["id"] == name for d in data)
        assert [m["id"] for m in executions] == [d["resource_version"] for d in data]  # id: the resourceVersion
        assert len({m["id"] for m in executions}) == len(executions)
        phases = [d["status"]["phase"] for d in data]
        assert phases[-1] == "Completed" and "Running" in phases, phases
        assert data[-1]["status"]["result"]["steps"] == 3 and data[-1]["finished"] is True
        end = messages[-1]
        assert json.loads(end["data"]) == {
            "execution_id": name,
            "namespace": run_namespace,
            "status": "Completed",
            "reason": data[-1]["status"]["reason"],
        }
        assert end["id"] == executions[-1]["id"]

        # Reconnecting with the last id seen: that state is not sent again, only the end.
        last = {"Last-Event-ID": end["id"]}
        async with stream(served, accounts.reader, f"/api/v1/executions/{name}/stream", **last) as again:
            resumed = await again.until("end")
        assert [m.get("event") for m in resumed if "comment" not in m] == [None, "end"], resumed  # retry, end

        # The namespace's stream saw the run come and finish.
        seen: list[dict[str, Any]] = []

        async def finished() -> bool:
            message = await changes.next()
            if message.get("event") == "change":
                seen.append(json.loads(message["data"]))
            return any(c["execution"]["id"] == name and c["execution"]["finished"] for c in seen)

        await until(finished, 60, "the namespace's stream to show the run finished")
        assert seen[0]["type"] == "ADDED" and seen[0]["execution"]["id"] == name and seen[0]["listed"] is False

    async with served.http(accounts.reader) as http:
        steps = (await http.get(f"/api/v1/executions/{name}/steps")).json()["steps"]
        assert [(s["key"], s["state"]) for s in steps] == [(f"step-{i}", "Completed") for i in range(3)]
        assert (await http.get(f"/api/v1/executions/{name}/events")).status_code == 403  # reader: no Events
    async with served.http(accounts.writer) as http:

        async def completed_event() -> list[dict[str, Any]]:
            answer = (await http.get(f"/api/v1/executions/{name}/events")).json()["events"]
            return [e for e in answer if e["reason"] == "Completed"]

        await until(completed_event, 30, "the run's Completed Event")


async def test_a_stream_ends_when_its_caller_loses_access_and_streams_are_bounded(
    control_plane: Cluster, quiet_namespace: str, serve: Any
) -> None:
    ns = quiet_namespace
    accounts = make_accounts(control_plane, ns)
    name = await _start(control_plane, ns)
    served = await serve(ns, heartbeat_seconds=0.5, recheck_seconds=1, max_streams=1)
    path = f"/api/v1/executions/{name}/stream"
    async with stream(served, accounts.canceller, path) as states:
        assert (await states.next()) == {"retry": "3000"}
        assert (await states.next())["event"] == "execution"
        async with served.http(accounts.reader) as http:
            full = await refused_stream(http, path)  # one stream is this server's most
        assert full.status_code == 503 and full.json()["reason"] == "ServiceUnavailable" and full.headers["Retry-After"]

        control_plane.kubectl("-n", ns, "delete", "rolebinding", "canceller")
        messages = await states.until("error", timeout=60)
        assert json.loads(messages[-1]["data"])["reason"] == "Forbidden", messages[-1]

    async def slot_given_back() -> bool:  # once the server has noticed that stream end
        async with stream(served, accounts.reader, path) as states:
            return states.response.status_code == 200

    await until(slot_given_back, 30, "the stream's slot to be given back")


async def test_a_stream_is_refused_up_front_what_it_could_not_follow(
    control_plane: Cluster, quiet_namespace: str, serve: Any
) -> None:
    ns = quiet_namespace
    make_accounts(control_plane, ns)
    control_plane.kubectl("-n", ns, "create", "serviceaccount", "getter")
    control_plane.kubectl("-n", ns, "create", "role", "getter", "--verb=get,list", f"--resource={WFX}")
    control_plane.kubectl("-n", ns, "create", "rolebinding", "getter", "--role=getter", f"--serviceaccount={ns}:getter")
    getter = _token(control_plane, ns, "getter")
    name = await _start(control_plane, ns)
    served = await serve(ns)
    async with served.http(getter) as http:
        assert (await http.get(f"/api/v1/executions/{name}")).status_code == 200
        for path in (f"/api/v1/executions/{name}/stream", "/api/v1/executions?watch=true"):
            refused = await refused_stream(http, path)
            assert refused.status_code == 403 and "cannot watch" in refused.json()["error"], refused.text
        missing = await refused_stream(http, "/api/v1/executions/no-such-run/stream")
        assert missing.status_code == 404
    assert served.app[TOKENS].made == 1


# ----- who cancelled: the chart's cancel-audit policy sees the caller ---------------------------------


@pytest.mark.usefixtures("audit")
async def test_the_cancel_audit_policy_records_the_caller_not_the_server(
    control_plane: Cluster, logs: Path, procs: list[Proc], serve: Any
) -> None:
    ns, alice_kubeconfig, user = cancel_audit._namespace_with_operator(control_plane, logs, procs, audited=True)

    async def policies_in_effect() -> bool:
        return cancel_audit.policies_in_effect(control_plane, ns, alice_kubeconfig, user)

    await until(policies_in_effect, 30, "the audit policies to take effect")
    alice = _token(control_plane, ns, "alice")  # may create, get and patch runs in ns; nothing else
    served = await serve(ns)
    async with served.http(alice) as http:
        made = await http.post(f"/api/v1/workflows/{NOBODY}/run", json={})
        assert made.status_code == 201, made.text
        name = made.json()["execution_id"]
        cancelled = await http.post(f"/api/v1/executions/{name}/cancel", json={"reason": "wrong input"})
        assert cancelled.status_code == 200, cancelled.text

        async def recorded() -> dict[str, Any] | None:
            shown = (await http.get(f"/api/v1/executions/{name}")).json()
            return shown["status"]["cancellation"] if shown["status"]["phase"] == "Cancelled" else None

        cancellation = await until(recorded, 30, f"{name} cancelled")
    assert cancellation["requested_by_user"] == user == f"system:serviceaccount:{ns}:alice"
    assert cancellation["requested_by"] == "kubestep-server" and cancellation["message"] == "wrong input"


# ----- the command -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", [[], ["--cache", "all"]], ids=["passthrough", "cache"])
def test_the_kubestep_server_command_serves_and_stops_on_sigterm(
    control_plane: Cluster, quiet_namespace: str, cache: list[str]
) -> None:
    ns = quiet_namespace
    accounts = make_accounts(control_plane, ns)
    port = free_port()
    argv = [sys.executable, "-m", "kubestep._cli", "server", "--host", "127.0.0.1", "--port", str(port), "-n", ns]
    argv += cache
    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                return False

        wait_until(healthy, 30, interval=0.2, what="kubestep server to answer /healthz")
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
        assert httpx.get(f"{base}/api/v1/executions", timeout=5).status_code == 401
        listed = httpx.get(
            f"{base}/api/v1/executions", headers={"Authorization": f"Bearer {accounts.reader}"}, timeout=10
        )
        assert listed.status_code == 200 and listed.json()["namespace"] == ns and listed.json()["items"] == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        output = proc.stdout.read() if proc.stdout else ""
        assert "serving the API on 127.0.0.1" in output and accounts.reader not in output, output
        assert ("cache: every namespace" if cache else "cache: off") in output, output
        assert "GET /healthz" not in output and "GET /readyz" not in output, output  # probes log at DEBUG
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
