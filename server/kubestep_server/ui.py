"""The UI: its pages and files (``static/``), and the API it needs beyond ``routes``: signing in
with a token kept in a cookie, and asking what the caller may do.

Signing in (``POST /api/v1/session`` with ``{"token": ...}``) checks the token with the apiserver
(a SelfSubjectAccessReview made with it: 401 if the apiserver does not accept it) and sets it in
the ``kubestep_token`` cookie: HttpOnly (no script reads it), SameSite=Strict (no other site's page
sends it), Path=/, Secure over TLS or with ``--secure-cookies``. The token is never in a URL nor in
anything a script can read. A request signed in by cookie that changes something must also send
``X-Kubestep-CSRF: 1`` (``app._auth``), which no cross-site form can.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import web

from .auth import GROUP, RESOURCE, bearer_token
from .context import COOKIE, SETTINGS, TOKENS, caller_token, namespace_of
from .errors import bad_request

STATIC = Path(__file__).parent / "static"

#: The UI's pages: their own scripts and styles only (no inline ones), never framed.
PAGE_CSP = "default-src 'self'; frame-ancestors 'none'"

VERBS = frozenset({"get", "list", "watch", "patch", "create", "update", "delete"})


async def _review(request: web.Request, token: str, verb: str, namespace: str) -> dict[str, Any]:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"namespace": namespace, "verb": verb, "group": GROUP, "resource": RESOURCE}},
    }
    async with request.app[TOKENS].lease(token) as kube:
        answer: dict[str, Any] = await kube.create("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)
    return answer.get("status") or {}


async def sign_in(request: web.Request) -> web.Response:
    """``POST /api/v1/session``: ``{"token": ...}``; 204 and the cookie, or 401."""
    if request.content_type.lower() != "application/json":
        raise bad_request('send the token as JSON: {"token": "..."} with Content-Type: application/json')
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        raise bad_request("the request body is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("token"), str):
        raise bad_request('the request body must be {"token": "<a Kubernetes token>"}')
    token = bearer_token(f"Bearer {body['token'].strip()}")
    await _review(request, token, "get", namespace_of(request))  # the apiserver's 401 if it rejects it
    response = web.Response(status=204)
    response.set_cookie(
        COOKIE,
        token,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure or request.app[SETTINGS].secure_cookies,
    )
    return response


async def sign_out(request: web.Request) -> web.Response:
    """``DELETE /api/v1/session``: clears the cookie."""
    response = web.Response(status=204)
    response.del_cookie(COOKIE, path="/")
    return response


async def can_i(request: web.Request) -> web.Response:
    """``GET /api/v1/can-i?verb=patch&namespace=NS``: ``{"allowed": bool}`` for runs, from a
    SelfSubjectAccessReview made with the caller's token."""
    verb = request.query.get("verb", "")
    if verb not in VERBS:
        raise bad_request(f"verb must be one of {', '.join(sorted(VERBS))}")
    namespace = namespace_of(request)
    status = await _review(request, caller_token(request), verb, namespace)
    allowed = bool(status.get("allowed")) and not status.get("denied")
    return web.json_response({"verb": verb, "namespace": namespace, "allowed": allowed})


#: Where a page takes the markup every page shares (``static/_header.html``: the bar, the problem box,
#: the sign-in form), written once instead of in each page.
HEADER_MARK = "<!-- kubestep:header (ui.py puts _header.html here) -->"


def assemble(name: str) -> bytes:
    """The page ``name`` with the shared header in place (done once per page, at start)."""
    page = (STATIC / name).read_text()
    if HEADER_MARK not in page:
        raise RuntimeError(f"{name} lacks the header mark")
    return page.replace(HEADER_MARK, (STATIC / "_header.html").read_text()).encode()


_PAGES = {name: assemble(name) for name in ("index.html", "run.html")}


def _page(name: str) -> web.Response:
    return web.Response(body=_PAGES[name], headers={"Content-Type": "text/html; charset=utf-8"})


async def runs_page(request: web.Request) -> web.Response:
    """``GET /``: the runs list."""
    return _page("index.html")


async def run_page(request: web.Request) -> web.Response:
    """``GET /runs/{namespace}/{name}``: one run (the script reads the names from the path)."""
    return _page("run.html")
