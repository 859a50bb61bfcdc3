"""``kubestep server``'s caller identity without a cluster: the bearer header's rules, the per-token
client cache (bounded, closes what it drops, never while in use), and what ``Kube.for_token`` sends."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubestep._kube import Kube
from kubestep_server.auth import TokenClients, bearer_token, token_key
from kubestep_server.errors import Problem


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def-ghi_jkl", "abc.def-ghi_jkl"),
        ("bearer abc", "abc"),  # the scheme is case-insensitive (RFC 7235)
        ("BEARER   abc  ", "abc"),
        ("Bearer eyJhbGciOi.eyJzdWIi.c2ln==", "eyJhbGciOi.eyJzdWIi.c2ln=="),
    ],
)
def test_a_bearer_header_gives_its_token(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "   ",
        "Bearer",
        "Bearer ",
        "Basic SECRETdXNlcjpwYXNz",
        "Token SECRET",
        "Bearer SECRETa SECRETb",
        "Bearer SECRETa\tb",
        "Bearer SECRETé",
    ],
)
def test_anything_else_is_a_401_that_repeats_no_credential(header: str | None) -> None:
    with pytest.raises(Problem) as caught:
        bearer_token(header)
    assert caught.value.status == 401 and caught.value.reason == "Unauthorized"
    assert caught.value.headers["WWW-Authenticate"].startswith("Bearer")
    assert "SECRET" not in caught.value.message


class FakeKube:
    def __init__(self, token: str) -> None:
        self.token = token
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _cache(size: int = 2, idle: float = 100.0) -> tuple[TokenClients, list[FakeKube], Clock]:
    made: list[FakeKube] = []
    clock = Clock()

    def make(token: str) -> Kube:
        kube = FakeKube(token)
        made.append(kube)
        return kube  # type: ignore[return-value]

    return TokenClients(make, size=size, idle_seconds=idle, clock=clock), made, clock


async def test_a_token_reuses_its_client_and_the_least_recently_used_is_closed_when_evicted() -> None:
    cache, made, _ = _cache(size=2)
    for token in ("a", "b", "a"):
        async with cache.lease(token):
            pass
    assert [k.token for k in made] == ["a", "b"] and cache.made == 2
    async with cache.lease("c"):  # "b" is the least recently used of three
        pass
    assert [(k.token, k.closed) for k in made] == [("a", 0), ("b", 1), ("c", 0)]
    assert len(cache) == 2


async def test_a_client_in_use_is_closed_only_when_its_last_user_is_done() -> None:
    cache, made, _ = _cache(size=1)
    async with cache.lease("a") as a:
        async with cache.lease("b"):  # evicts "a" from the cache, but a stream still uses it
            assert made[0].closed == 0
        assert made[0].closed == 0
        assert a is made[0]
    assert made[0].closed == 1 and made[1].closed == 0


async def test_idle_clients_are_closed_and_refused_tokens_forgotten() -> None:
    cache, made, clock = _cache(size=10, idle=100.0)
    async with cache.lease("a"):
        pass
    async with cache.lease("b"):
        clock.now = 150.0
        await cache.sweep()  # "a" idle 150 s: closed; "b" in use: kept
    assert (made[0].closed, made[1].closed) == (1, 0) and len(cache) == 1
    await cache.forget("b")
    assert made[1].closed == 1 and len(cache) == 0
    async with cache.lease("b"):  # a new client for it, should it come back
        pass
    assert cache.made == 3
    await cache.aclose()
    assert all(k.closed == 1 for k in made)


def test_the_cache_keys_are_digests_not_tokens() -> None:
    assert token_key("secret-token") != "secret-token" and "secret" not in token_key("secret-token")
    assert len(token_key("x")) == 64


def test_a_token_client_sends_the_token_and_nothing_of_the_servers_own(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:9", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: the-servers-own}}]
contexts: [{name: x, context: {cluster: c, user: u, namespace: ns1}}]
current-context: x
"""
    )
    base = Kube(str(kubeconfig))
    assert base._auth() == {"Authorization": "Bearer the-servers-own"}
    caller = base.for_token("the-callers")
    assert caller._auth() == {"Authorization": "Bearer the-callers"}
    assert caller._base == base._base and caller.default_namespace == "ns1"
    assert base._auth() == {"Authorization": "Bearer the-servers-own"}  # the base is left as it was
    for bad in ("", "a b", "a\nb"):
        with pytest.raises(ValueError):
            base.for_token(bad)


async def test_a_token_client_presents_no_client_certificate(tmp_path: Path) -> None:
    """The apiserver takes a client certificate over a bearer token: were the server's own presented,
    every caller would act as the server (the local control plane's admin kubeconfig has one). A TLS
    server that asks for a client certificate says what each client presented."""
    import ssl

    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from kubestep_dev.certs import LeafSpec, ensure_pki

    pki = ensure_pki(
        tmp_path / "pki",
        (
            LeafSpec("apiserver", "kube-apiserver", server=True, ips=("127.0.0.1",)),
            LeafSpec("admin", "kubestep-admin", ("system:masters",), client=True),
        ),
    )
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert))
    tls.load_cert_chain(pki.cert("apiserver"), pki.key("apiserver"))
    tls.verify_mode = ssl.CERT_OPTIONAL

    async def who(request: web.Request) -> web.Response:
        assert request.transport is not None
        peer = request.transport.get_extra_info("peercert") or {}
        subject = dict(x[0] for x in peer.get("subject", ()))
        return web.json_response({"cert": subject.get("commonName"), "auth": request.headers.get("Authorization")})

    app = web.Application()
    app.router.add_get("/who", who)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=tls)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "https://127.0.0.1:{server.port}", certificate-authority: {pki.ca_cert}}}}}]
users: [{{name: u, user: {{client-certificate: {pki.cert("admin")}, client-key: {pki.key("admin")}}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""
    )
    base = Kube(str(kubeconfig))
    caller = base.for_token("the-callers")
    try:
        assert await base.get("/who") == {"cert": "kubestep-admin", "auth": None}
        assert await caller.get("/who") == {"cert": None, "auth": "Bearer the-callers"}  # and the CA still checked
    finally:
        await base.aclose()
        await caller.aclose()
        await server.close()
