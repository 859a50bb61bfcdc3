"""``kubestep server``'s HTTP rules that hold before anything reaches the apiserver, on the real
application with an apiserver that cannot be reached (so any request that did reach for it would
answer 502): no token is a 401 with no client made; CSRF (a state change must be JSON); sizes, bad
JSON, names that could leave the runs' paths; the security headers on every answer; no CORS."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer

from kubestep._kube import Kube
from kubestep_server.app import make_app
from kubestep_server.context import TOKENS
from kubestep_server.settings import ServerSettings

TOKEN = {"Authorization": "Bearer some.token"}
JSON = {"Content-Type": "application/json"}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, TestServer]]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "https://127.0.0.1:{_closed_port()}", insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: the-servers-own}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u, namespace: ns1}}}}]
current-context: x
"""
    )
    server = TestServer(make_app(ServerSettings(namespace="ns1"), Kube(str(kubeconfig))), host="127.0.0.1")
    await server.start_server()
    async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=10) as http:
        yield http, server
    await server.close()


def _made(server: TestServer) -> int:
    return server.app[TOKENS].made


ROUTES = [
    ("GET", "/api/v1/executions"),
    ("GET", "/api/v1/executions/r1"),
    ("POST", "/api/v1/executions/r1/cancel"),
    ("GET", "/api/v1/executions/r1/steps"),
    ("GET", "/api/v1/executions/r1/events"),
    ("POST", "/api/v1/executions/r1/events"),
    ("GET", "/api/v1/executions/r1/stream"),
    ("GET", "/api/v1/executions?watch=true"),
    ("GET", "/api/v1/executions/stream"),  # a run named "stream"
    ("POST", "/api/v1/executions/cancel"),
    ("POST", "/api/v1/workflows/steps/run"),
    ("GET", "/api/v1/no/such/route"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_without_a_token_every_api_route_is_a_401_and_nothing_is_asked_of_the_apiserver(
    served: tuple[httpx.AsyncClient, TestServer], method: str, path: str
) -> None:
    http, server = served
    for headers in ({}, {"Authorization": "Basic dTpw"}, {"Authorization": "Bearer"}):
        answer = await http.request(method, path, headers={**headers, **JSON}, content=b"{}")
        assert answer.status_code == 401, answer.text
        assert answer.json()["reason"] == "Unauthorized" and answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert _made(server) == 0  # not one client made: no identity was ever presented to the apiserver


async def test_with_a_token_the_request_goes_to_the_apiserver(served: tuple[httpx.AsyncClient, TestServer]) -> None:
    """The counterpart of the test above: that apiserver is unreachable, so reaching for it is a 502."""
    http, server = served
    answer = await http.get("/api/v1/executions", headers=TOKEN)
    assert answer.status_code == 502 and answer.json()["reason"] == "BadGateway", answer.text
    assert _made(server) == 1


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/jsonx"],
)
async def test_a_state_change_that_is_not_json_is_a_415(
    served: tuple[httpx.AsyncClient, TestServer], content_type: str | None
) -> None:
    """What a cross-site HTML form can send (and a missing type) is refused before anything is done."""
    http, server = served
    headers = {**TOKEN, **({"Content-Type": content_type} if content_type else {})}
    for path in ("/api/v1/executions/r1/cancel", "/api/v1/executions/r1/events", "/api/v1/workflows/w/run"):
        answer = await http.post(path, headers=headers, content=b"reason=x")
        assert answer.status_code == 415 and answer.json()["reason"] == "UnsupportedMediaType", answer.text
    assert _made(server) == 0


async def test_json_with_a_charset_is_json(served: tuple[httpx.AsyncClient, TestServer]) -> None:
    http, _ = served
    answer = await http.post(
        "/api/v1/executions/r1/cancel", headers={**TOKEN, "Content-Type": "application/json; charset=utf-8"}
    )
    assert answer.status_code == 502  # past every check, on to the (unreachable) apiserver


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/api/v1/executions/r1/cancel", b"{not json", "not JSON"),
        ("/api/v1/executions/r1/cancel", b"[1, 2]", "JSON object"),
        ("/api/v1/executions/r1/cancel", b'{"reson": "typo"}', "reson"),
        ("/api/v1/executions/r1/cancel", b'{"grace_period_seconds": -1}', "grace_period_seconds"),
        ("/api/v1/executions/r1/cancel", b'{"grace_period_seconds": "soon"}', "grace_period_seconds"),
        ("/api/v1/executions/r1/cancel", b"[" * 100_00 + b"]" * 100_00, "JSON"),
        ("/api/v1/executions/r1/events", b"{}", "topic"),
        ("/api/v1/workflows/w/run", b'{"labels": {"a": 1}}', "labels"),
    ],
)
async def test_a_bad_body_is_a_400_that_says_why(
    served: tuple[httpx.AsyncClient, TestServer], path: str, body: bytes, words: str
) -> None:
    http, server = served
    answer = await http.post(path, headers={**TOKEN, **JSON}, content=body)
    assert answer.status_code == 400 and answer.json()["reason"] == "BadRequest", answer.text
    assert words in answer.json()["error"]
    assert _made(server) == 0


async def test_a_body_over_the_limit_is_a_413(served: tuple[httpx.AsyncClient, TestServer]) -> None:
    http, _ = served
    big = b'{"payload": "' + b"x" * (64 * 1024) + b'"}'
    answer = await http.post("/api/v1/workflows/w/run", headers={**TOKEN, **JSON}, content=big)
    assert answer.status_code == 413 and answer.json()["reason"] == "RequestEntityTooLarge", answer.text


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/executions/..%2F..%2F..%2Fapi%2Fv1%2Fsecrets",
        "/api/v1/executions/R1",
        "/api/v1/executions/a_b/cancel",
        "/api/v1/executions?namespace=kube-system%2Fsecrets",
        "/api/v1/executions/r1?namespace=..",
        "/api/v1/executions?limit=0",
        "/api/v1/executions?limit=100000",
        "/api/v1/executions?phase=Running%2Cstatus.worker%3Dx",
    ],
)
async def test_names_that_are_not_kubernetes_names_are_a_400(
    served: tuple[httpx.AsyncClient, TestServer], path: str
) -> None:
    """Whatever goes into an apiserver path is a valid name first: no route leads anywhere but to runs."""
    http, server = served
    method = "POST" if path.endswith("/cancel") else "GET"
    answer = await http.request(method, path, headers={**TOKEN, **JSON})
    assert answer.status_code == 400 and answer.json()["reason"] == "BadRequest", answer.text
    assert _made(server) == 0


async def test_unknown_routes_and_methods_answer_json(served: tuple[httpx.AsyncClient, TestServer]) -> None:
    http, _ = served
    missing = await http.get("/api/v1/secrets", headers=TOKEN)
    assert missing.status_code == 404 and missing.json()["reason"] == "NotFound"
    wrong = await http.delete("/api/v1/executions/r1", headers={**TOKEN, **JSON})
    assert wrong.status_code == 405 and wrong.json()["reason"] == "MethodNotAllowed" and "GET" in wrong.headers["Allow"]
    outside = await http.get("/anything")
    assert outside.status_code == 404 and outside.json()["reason"] == "NotFound"


async def test_every_answer_has_the_security_headers_and_none_grants_cors(
    served: tuple[httpx.AsyncClient, TestServer],
) -> None:
    http, _ = served
    origin = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    answers: list[Any] = [
        await http.get("/healthz"),
        await http.get("/readyz"),
        await http.get("/api/v1/executions"),
        await http.get("/api/v1/executions", headers={**TOKEN, **origin}),
        await http.options("/api/v1/executions/r1/cancel", headers=origin),
        await http.options("/api/v1/executions/r1/cancel", headers={**TOKEN, **origin}),
        await http.post("/api/v1/executions/r1/cancel", headers={**TOKEN, **origin}, content=b"reason=x"),
    ]
    for answer in answers:
        assert answer.headers["X-Content-Type-Options"] == "nosniff", answer
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert answer.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert answer.headers["Cache-Control"] == "no-store"
        assert not [h for h in answer.headers if h.lower().startswith("access-control-")], answer.headers
        assert "aiohttp" not in answer.headers.get("Server", "") and "Python" not in answer.headers.get("Server", "")
    preflight = answers[5]
    assert preflight.status_code == 405  # no preflight is ever granted


async def test_the_probes_need_no_token_and_say_nothing(served: tuple[httpx.AsyncClient, TestServer]) -> None:
    http, server = served
    for path in ("/healthz", "/readyz"):
        answer = await http.get(path)
        assert answer.status_code == 200 and answer.text == "ok\n"
    assert _made(server) == 0
