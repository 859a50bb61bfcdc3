"""The UI's rules that hold before anything reaches the apiserver (an unreachable one, as in
``test_server_http``): the cookie is a credential like the header; a state change signed in by
cookie needs ``X-Kubestep-CSRF: 1``; the pages and files are served with a CSP that allows only
their own origin; every UI file is in the package (and so in the wheel and the image)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp.test_utils import TestServer

from kubestep._kube import Kube
from kubestep_server import ui
from kubestep_server.app import make_app
from kubestep_server.context import TOKENS
from kubestep_server.settings import ServerSettings

from .test_server_http import _closed_port

JSON = {"Content-Type": "application/json"}


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


async def test_a_cookie_state_change_without_the_csrf_header_is_refused_before_the_apiserver(
    served: tuple[httpx.AsyncClient, TestServer],
) -> None:
    http, server = served
    http.cookies.set("kubestep_token", "some.token")
    answer = await http.post("/api/v1/executions/r1/cancel", headers=JSON, content=b"{}")
    assert answer.status_code == 403
    assert "X-Kubestep-CSRF" in answer.json()["error"]
    assert server.app[TOKENS].made == 0
    # With the header it goes on to the apiserver (unreachable here: 502), as the caller.
    answer = await http.post("/api/v1/executions/r1/cancel", headers={**JSON, "X-Kubestep-CSRF": "1"}, content=b"{}")
    assert answer.status_code == 502
    assert server.app[TOKENS].made == 1


async def test_a_cookie_is_a_credential_for_reads(served: tuple[httpx.AsyncClient, TestServer]) -> None:
    http, _ = served
    assert (await http.get("/api/v1/can-i?verb=patch")).status_code == 401
    http.cookies.set("kubestep_token", "some.token")
    assert (await http.get("/api/v1/can-i?verb=patch")).status_code == 502  # asked the apiserver
    assert (await http.get("/api/v1/can-i?verb=steal")).status_code == 400


async def test_sign_in_needs_a_json_token_and_sign_out_clears_the_cookie(
    served: tuple[httpx.AsyncClient, TestServer],
) -> None:
    http, _ = served
    assert (await http.post("/api/v1/session", headers=JSON, content=b'{"token": 3}')).status_code == 400
    assert (await http.post("/api/v1/session", data={"token": "x"})).status_code in (400, 415)
    assert (await http.post("/api/v1/session", headers=JSON, content=b'{"token": "a b"}')).status_code == 401
    http.cookies.set("kubestep_token", "some.token")
    out = await http.delete("/api/v1/session", headers={**JSON, "X-Kubestep-CSRF": "1"})
    assert out.status_code == 204
    assert 'kubestep_token=""' in out.headers["Set-Cookie"]


@pytest.mark.parametrize("path", ["/", "/runs/ns1/r1", "/static/runs.js", "/static/ui.css"])
async def test_pages_need_no_token_and_allow_only_their_own_origin(
    served: tuple[httpx.AsyncClient, TestServer], path: str
) -> None:
    http, server = served
    answer = await http.get(path)
    assert answer.status_code == 200
    assert answer.headers["Content-Security-Policy"] == "default-src 'self'; frame-ancestors 'none'"
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert server.app[TOKENS].made == 0
    assert (await http.get("/api/v1/executions", headers={"Authorization": "Bearer x"})).headers[
        "Content-Security-Policy"
    ] == "default-src 'none'; frame-ancestors 'none'"


def test_the_ui_has_no_inline_script_style_or_html_sink() -> None:
    files = {p.name: p.read_text() for p in ui.STATIC.iterdir()}
    assert {"index.html", "run.html", "common.js", "runs.js", "run.js", "ui.css"} <= set(files)
    for name, text in files.items():
        if name.endswith(".html"):
            assert not re.search(r"<script(?![^>]*\bsrc=)", text), name
            assert " style=" not in text and "<style" not in text, name
            assert not re.search(r"\son[a-z]+=", text), name
        if name.endswith(".js"):
            for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "localStorage"):
                assert sink not in text, (name, sink)
        assert "http://" not in text and "https://" not in text, name  # nothing fetched from elsewhere


async def test_every_page_has_the_shared_header_once(served: tuple[httpx.AsyncClient, TestServer]) -> None:
    http, _ = served
    for path in ("/", "/runs/ns1/r1"):
        page = (await http.get(path)).text
        assert page.count("<header>") == 1 and page.count('id="sign-in"') == 1 and page.count('id="problem"') == 1
        assert ui.HEADER_MARK not in page
    for name in ("index.html", "run.html"):  # written once, in _header.html
        assert "<header>" not in (ui.STATIC / name).read_text()


def test_probe_requests_are_logged_at_debug_and_the_rest_at_info(caplog: pytest.LogCaptureFixture) -> None:
    import logging
    from unittest import mock

    from kubestep_server.app import AccessLogger

    log = logging.getLogger("test.access")
    access = AccessLogger(log, '%r "%r" %s')
    response = mock.Mock(status=200, body_length=3, headers={})

    def request(path: str) -> mock.Mock:
        version = mock.Mock(major=1, minor=1)
        return mock.Mock(path=path, method="GET", remote="10.0.0.1", headers={}, path_qs=path, version=version)

    with caplog.at_level(logging.DEBUG, logger="test.access"):
        access.log(request("/healthz"), response, 0.001)
        access.log(request("/readyz"), response, 0.001)
        access.log(request("/api/v1/executions"), response, 0.001)
    levels = [(r.levelname, "probe" in r.getMessage()) for r in caplog.records]
    assert levels == [("DEBUG", True), ("DEBUG", True), ("INFO", False)], levels
