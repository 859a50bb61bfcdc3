"""A small async Kubernetes API client over aiohttp.

Why not the ``kubernetes`` package's client: it is synchronous, and a worker
holds a long watch while it runs steps and writes status concurrently. We use
the ``kubernetes`` package only for what it does well — reading kubeconfig
and in-cluster configuration (including token refresh) — and speak the REST
API ourselves, with streaming watches and HTTP/1.1 keep-alive.

Why aiohttp and not httpx (which this client used first): under load the
per-request cost decides how many steps a worker can record. With 100 runs
writing through 24 connections, 88% of a worker's CPU went to httpx, most of
it in httpcore's connection pool, which scans every waiting request and every
connection on each request (py-spy, ``bench/README.md``); a lone request cost
2.4 ms of client CPU against 1.1 ms with aiohttp on the same loop. kopf, the
operator's framework, is built on aiohttp too.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import aiohttp

from ._errors import (
    ApiError,
    ConfigurationError,
    ConflictError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
    TooLargeError,
    TransportError,
)

logger = logging.getLogger("kubestep.kube")

_ERRORS: dict[int, type[ApiError]] = {
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: TooLargeError,
    422: InvalidError,
}


def load_configuration(kubeconfig: str | None = None, context: str | None = None) -> tuple[Any, str | None]:
    """Returns the kubernetes package's Configuration and the context's namespace.

    Order: an explicit kubeconfig path, then $KUBECONFIG / ~/.kube/config,
    then the in-cluster service account.
    """
    from kubernetes import config as kconfig
    from kubernetes.client import Configuration

    configuration = Configuration()
    namespace: str | None = None
    path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    first = path.split(os.pathsep)[0] if path else ""
    if kubeconfig or os.path.exists(first):
        try:
            kconfig.load_kube_config(config_file=path, context=context, client_configuration=configuration)
            _, active = kconfig.list_kube_config_contexts(config_file=path)
            if context:
                contexts, _ = kconfig.list_kube_config_contexts(config_file=path)
                active = next((c for c in contexts if c["name"] == context), active)
            namespace = (active or {}).get("context", {}).get("namespace")
        except Exception as e:  # the kubernetes package raises several unrelated types
            raise ConfigurationError(f"cannot load kubeconfig {path}: {e}") from e
        return configuration, namespace
    try:
        kconfig.load_incluster_config(client_configuration=configuration)
    except kconfig.ConfigException as e:
        where = f"KUBECONFIG={path}: no such file" if os.environ.get("KUBECONFIG") else f"no kubeconfig ({path})"
        raise ConfigurationError(
            f"{where}, and not running in a cluster; for the local control plane: `kubestep dev up`, then "
            '`eval "$(kubestep dev env)"`'
        ) from e
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            namespace = f.read().strip()
    except OSError:
        namespace = None
    return configuration, namespace


POOL_SIZE = 24  # connections per client unless told (the worker's: KUBESTEP_HTTP_CONNECTIONS, _settings)
REQUEST_TIMEOUT = 30.0


class Kube:
    """Async access to one cluster: JSON requests, merge patches, streaming watches."""

    def __init__(
        self, kubeconfig: str | None = None, context: str | None = None, connections: int | None = None
    ) -> None:
        """``connections``: the pool size (default 24). A caller that bounds its own requests in flight
        sizes the pool to match, so no request waits for a connection."""
        self._connections = connections or POOL_SIZE
        self._configuration, self.default_namespace = load_configuration(kubeconfig, context)
        self._ssl: ssl.SSLContext | bool
        if self._configuration.verify_ssl:
            self._ssl = ssl.create_default_context(cafile=self._configuration.ssl_ca_cert)
            if self._configuration.cert_file:
                self._ssl.load_cert_chain(self._configuration.cert_file, self._configuration.key_file)
        else:
            self._ssl = False
        self._base = str(self._configuration.host).rstrip("/")
        self._session: aiohttp.ClientSession | None = None  # made on first use, inside the event loop
        # Set only on a client made by ``for_token``: the one credential it ever sends.
        self._bearer: str | None = None
        self._token_ssl: ssl.SSLContext | bool | None = None  # the TLS settings ``for_token`` clients share

    def for_token(self, token: str, *, connections: int | None = None) -> Kube:
        """A client of the same apiserver (its URL, its CA, its TLS verification) that authenticates
        as the holder of ``token`` and nothing else: it sends ``Authorization: Bearer <token>`` and
        never this client's own credentials. No client certificate is presented, since the apiserver
        would take a certificate over the bearer token and the request would run as this client's
        identity, and the token is never refreshed from a kubeconfig or an exec plugin (it is the
        caller's). ``kubestep server`` makes every request of a caller with one of these, so the
        apiserver authenticates and authorizes each one as it would the caller's own ``kubectl``.

        The new client owns its own connections: close it (``aclose``) when done with it."""
        if not token or any(c.isspace() for c in token):
            raise ValueError("a bearer token is one non-empty word")
        if self._token_ssl is None:
            if self._ssl is False:
                self._token_ssl = False  # the kubeconfig says insecure-skip-tls-verify: so be it, for all
            else:
                # The same trust (the kubeconfig's CA, or the system's), without the client certificate.
                self._token_ssl = ssl.create_default_context(cafile=self._configuration.ssl_ca_cert)
        clone = copy.copy(self)
        clone._connections = connections or self._connections
        clone._ssl = self._token_ssl
        clone._session = None
        clone._bearer = token
        return clone

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # A small pool, every connection kept alive: each new connection costs a TLS handshake,
            # and a 2-core apiserver serves no more requests at once anyway.
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=self._connections, keepalive_timeout=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": "kubestep"},
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
                skip_auto_headers=("Accept-Encoding",),
            )
        return self._session

    def _auth(self) -> dict[str, str]:
        """The bearer token, refreshed the way the kubernetes package would (exec plugins, in-cluster);
        a ``for_token`` client's own token, as given."""
        if self._bearer is not None:
            return {"Authorization": f"Bearer {self._bearer}"}
        configuration = self._configuration
        hook = getattr(configuration, "refresh_api_key_hook", None)
        if hook is not None:
            hook(configuration)
        token = configuration.api_key.get("authorization") or configuration.api_key.get("BearerToken")
        if not token:
            return {}
        return {"Authorization": token if " " in token else f"Bearer {token}"}

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @staticmethod
    def _raise_for(status: int, body: bytes) -> None:
        if status < 400:
            return
        text = body.decode("utf-8", "replace")
        try:
            parsed = json.loads(text)
            message = parsed.get("message", text)
        except (ValueError, AttributeError):
            parsed, message = None, text
        cls = _ERRORS.get(status, ApiError)
        if any(m in str(message) for m in _TOO_LARGE):  # etcd's size limits come back as a 500
            cls = TooLargeError
        raise cls(status, message, parsed)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        content_type: str = "application/json",
        accept: str | None = None,
    ) -> Any:
        """One request, its JSON answer. ``accept``: an ``Accept`` header, e.g. a metadata-only list
        (``application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1``); none by default."""
        body = await self._exchange(method, path, json_body, params, content_type, accept=accept)
        return json.loads(body) if body else None

    async def get_sized(self, path: str, params: dict[str, Any] | None = None) -> tuple[Any, int]:
        """A GET's answer and its size in bytes (what a list page cost to read: ``watching.Informer``)."""
        body = await self._exchange("GET", path, None, params, "application/json")
        return (json.loads(body) if body else None), len(body)

    async def _exchange(
        self,
        method: str,
        path: str,
        json_body: Any,
        params: dict[str, Any] | None,
        content_type: str,
        *,
        accept: str | None = None,
    ) -> bytes:
        data = None if json_body is None else json.dumps(json_body, allow_nan=False).encode()
        headers = self._auth()
        if data is not None:
            headers["Content-Type"] = content_type
        if accept is not None:
            headers["Accept"] = accept
        url = self._base + path
        for attempt in range(6):
            try:
                async with self._client().request(method, url, data=data, params=params, headers=headers) as r:
                    status, body, retry_after = r.status, await r.read(), r.headers.get("Retry-After")
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                raise TransportError(f"{method} {path}: {e!r}") from e
            if status != 429:
                break
            # Too many requests, or storage still initialising: the apiserver says when to retry.
            try:
                delay = float(retry_after or "1")
            except ValueError:
                delay = 1.0
            await asyncio.sleep(min(delay, 2.0) * (attempt + 1) / 2)
        self._raise_for(status, body)
        return body

    async def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return await self.request("GET", path, params=params)

    async def create(self, path: str, body: dict[str, Any], params: dict[str, Any] | None = None) -> Any:
        return await self.request("POST", path, json_body=body, params=params)

    async def delete(self, path: str) -> Any:
        return await self.request("DELETE", path)

    async def merge_patch(
        self,
        path: str,
        patch: dict[str, Any],
        resource_version: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """JSON merge patch; with ``resource_version`` the write is conditional (409 if stale)."""
        if resource_version is not None:
            patch = {**patch, "metadata": {**patch.get("metadata", {}), "resourceVersion": resource_version}}
        return await self.request(
            "PATCH", path, json_body=patch, content_type="application/merge-patch+json", params=params
        )

    async def update_status(self, obj: dict[str, Any], status_patch: dict[str, Any]) -> Any:
        """PUT the status of ``obj`` with ``status_patch`` merged in (JSON merge-patch rules: None
        removes), conditional on ``obj``'s resourceVersion (409 if it changed).

        A merge patch would do the same in one request, but with the verb ``update`` a control
        write (a claim, an ending) can be told apart from a step record (``patch``) by the
        apiserver's Priority and Fairness (the chart's FlowSchemas), so it does not queue behind
        step data when the apiserver is saturated."""
        meta = obj["metadata"]
        body = {
            "apiVersion": obj.get("apiVersion", "kubestep.io/v1alpha1"),
            "kind": obj.get("kind", "WorkflowExecution"),
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "resourceVersion": meta["resourceVersion"],
            },
            "status": merge(obj.get("status") or {}, status_patch),
        }
        path = f"/apis/{body['apiVersion']}/namespaces/{meta['namespace']}/workflowexecutions/{meta['name']}/status"
        return await self.request("PUT", path, json_body=body)

    async def guarded_patch(
        self, path: str, fields: dict[str, Any], guard: dict[str, Any], root: str = "status"
    ) -> Any:
        """Sets ``root.fields`` only if ``root.guard`` still holds: a JSON patch with "test" operations.

        Unlike a resourceVersion precondition it does not fail because some
        other field changed meanwhile, only if a guarded field did (422/409).
        Values must not be None (JSON patch cannot remove a missing field).
        """
        ops: list[dict[str, Any]] = [{"op": "test", "path": f"/{root}/{k}", "value": v} for k, v in guard.items()]
        ops += [{"op": "add", "path": f"/{root}/{k}", "value": v} for k, v in fields.items()]
        return await self.request("PATCH", path, json_body=ops, content_type="application/json-patch+json")

    async def watch(
        self,
        path: str,
        resource_version: str,
        params: dict[str, Any] | None = None,
        timeout_seconds: int = 300,
        idle_seconds: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Yields watch events from ``resource_version``; ends when the server closes the stream.

        Bookmarks are requested so a reconnect resumes close to where it left
        off. A 410 Gone (an expired resourceVersion) arrives as an ERROR
        event or as the HTTP status. ``idle_seconds``: a stream silent this long
        is given up (TransportError); default, the server's timeout and 30 s more.
        ``kubestep._informer`` holds the rules for what to do next.
        """
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
            **(params or {}),
        }
        idle = idle_seconds if idle_seconds is not None else timeout_seconds + 30
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=REQUEST_TIMEOUT, sock_read=idle)
        try:
            async with self._client().get(
                self._base + path, params=query, headers=self._auth(), timeout=timeout
            ) as response:
                if response.status >= 400:
                    self._raise_for(response.status, await response.read())
                # Split lines ourselves: an event is one line and may be far longer than
                # aiohttp's readline limit (an object can approach etcd's 1.5 MiB).
                pending = b""
                async for chunk in response.content.iter_any():
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield json.loads(line)
                if pending.strip():
                    yield json.loads(pending)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise TransportError(f"watch {path}: {e!r}") from e

    async def post_event(
        self,
        obj: dict[str, Any],
        *,
        type_: str,
        reason: str,
        message: str,
        component: str,
        instance: str | None = None,
    ) -> None:
        """Posts a core/v1 Event about ``obj``; failures are logged, never raised."""
        from ._protocol import fmt_time, now

        meta = obj["metadata"]
        at = fmt_time(now())
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component, **({"host": instance} if instance else {})},
            "reportingComponent": f"kubestep.io/{component}",
            "reportingInstance": instance or component,
            "firstTimestamp": at[:19] + "Z",
            "lastTimestamp": at[:19] + "Z",
            "count": 1,
        }
        try:
            await self.create(f"/api/v1/namespaces/{meta['namespace']}/events", event)
        except (ApiError, TransportError) as e:
            logger.warning("could not post event %s for %s: %s", reason, meta["name"], e)


# How the apiserver says an object outgrew what etcd takes: etcd's own --max-request-bytes, and the
# apiserver's gRPC client limit to etcd (2 MiB), hit first by a large JSON patch (the property tests,
# tests/test_bad_input.py, found the second: the worker took it for an outage and re-queued forever).
_TOO_LARGE = ("request is too large", "trying to send message larger than max")


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch of ``patch`` onto ``target`` (neither is changed)."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def background(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Fire-and-forget with a strong reference, so the task is not collected mid-flight."""
    task: asyncio.Task[Any] = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


_tasks: set[asyncio.Task[Any]] = set()


async def settle(timeout: float) -> None:
    """Waits, ``timeout`` seconds at most, for the fire-and-forget requests still in flight (Events),
    so that a process on its way out does not lose its last words: a worker that restarted itself to
    shed a runaway step once exited before the Event saying why was sent."""
    pending = [t for t in _tasks if not t.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
