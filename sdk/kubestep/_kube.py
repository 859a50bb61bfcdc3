"""A small async Kubernetes API client over httpx.

Why not the ``kubernetes`` package's client: it is synchronous, and a worker
holds a long watch while it runs steps and writes status concurrently. We use
the ``kubernetes`` package only for what it does well — reading kubeconfig
and in-cluster configuration (including token refresh) — and speak the REST
API with httpx, which gives us streaming watches and HTTP/1.1 keep-alive.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator, Coroutine, Generator
from typing import Any

import httpx

from ._errors import (
    ApiError,
    ConfigurationError,
    ConflictError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
    TooLargeError,
)

logger = logging.getLogger("kubestep.kube")

_ERRORS: dict[int, type[ApiError]] = {
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: TooLargeError,
    422: InvalidError,
}


class _BearerAuth(httpx.Auth):
    """Adds the bearer token, refreshing it the way the kubernetes package would."""

    def __init__(self, configuration: Any) -> None:
        self._configuration = configuration

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        hook = getattr(self._configuration, "refresh_api_key_hook", None)
        if hook is not None:
            hook(self._configuration)
        token = self._configuration.api_key.get("authorization") or self._configuration.api_key.get(
            "BearerToken"
        )
        if token:
            request.headers["Authorization"] = token if " " in token else f"Bearer {token}"
        yield request


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
        raise ConfigurationError(
            "no kubeconfig found (set KUBECONFIG, or run `kubestep dev up`) and not running in a cluster"
        ) from e
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            namespace = f.read().strip()
    except OSError:
        namespace = None
    return configuration, namespace


POOL_SIZE = int(os.environ.get("KUBESTEP_HTTP_CONNECTIONS", "24"))


class Kube:
    """Async access to one cluster: JSON requests, merge patches, streaming watches."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None,
                 connections: int | None = None) -> None:
        """``connections``: the pool size (default ``KUBESTEP_HTTP_CONNECTIONS``). A caller that bounds
        its own requests in flight sizes the pool to match, so no request waits for a connection."""
        connections = connections or POOL_SIZE
        configuration, self.default_namespace = load_configuration(kubeconfig, context)
        verify: ssl.SSLContext | bool
        if configuration.verify_ssl:
            verify = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
            if configuration.cert_file:
                verify.load_cert_chain(configuration.cert_file, configuration.key_file)
        else:
            verify = False
        self._client = httpx.AsyncClient(
            base_url=configuration.host,
            verify=verify,
            auth=_BearerAuth(configuration),
            timeout=httpx.Timeout(30.0),
            # A small pool, every connection kept alive. httpcore checks every pooled
            # connection on every request, and closes connections beyond the keep-alive
            # limit, so each new one costs a TLS handshake: with 100 runs writing at once
            # and a pool of 200, that took most of a worker's CPU. Requests beyond the pool
            # wait for a connection; a 2-core apiserver serves no more at once anyway.
            # (HTTP/2 would share one connection, but httpx's HTTP/2 watch streams stalled
            # under that load.)
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            headers={"User-Agent": "kubestep"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            body = response.json()
            message = body.get("message", response.text)
        except ValueError:
            body, message = None, response.text
        cls = _ERRORS.get(response.status_code, ApiError)
        if "request is too large" in str(message):  # etcd's size limit comes back as a 500
            cls = TooLargeError
        raise cls(response.status_code, message, body)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        content = None if json_body is None else json.dumps(json_body)
        headers = {"Content-Type": content_type} if content is not None else None
        for attempt in range(6):
            response = await self._client.request(method, path, content=content, params=params, headers=headers)
            if response.status_code != 429:
                break
            # Too many requests, or storage still initialising: the apiserver says when to retry.
            try:
                delay = float(response.headers.get("Retry-After", "1"))
            except ValueError:
                delay = 1.0
            await asyncio.sleep(min(delay, 2.0) * (attempt + 1) / 2)
        self._raise_for(response)
        return response.json() if response.content else None

    async def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return await self.request("GET", path, params=params)

    async def create(self, path: str, body: dict[str, Any], params: dict[str, Any] | None = None) -> Any:
        return await self.request("POST", path, json_body=body, params=params)

    async def delete(self, path: str) -> Any:
        return await self.request("DELETE", path)

    async def merge_patch(self, path: str, patch: dict[str, Any], resource_version: str | None = None,
                          params: dict[str, Any] | None = None) -> Any:
        """JSON merge patch; with ``resource_version`` the write is conditional (409 if stale)."""
        if resource_version is not None:
            patch = {**patch, "metadata": {**patch.get("metadata", {}), "resourceVersion": resource_version}}
        return await self.request("PATCH", path, json_body=patch, content_type="application/merge-patch+json",
                                  params=params)

    async def guarded_patch(self, path: str, fields: dict[str, Any], guard: dict[str, Any], root: str = "status") -> Any:
        """Sets ``root.fields`` only if ``root.guard`` still holds: a JSON patch with "test" operations.

        Unlike a resourceVersion precondition it does not fail because some
        other field changed meanwhile, only if a guarded field did (422/409).
        Values must not be None (JSON patch cannot remove a missing field).
        """
        ops: list[dict[str, Any]] = [{"op": "test", "path": f"/{root}/{k}", "value": v} for k, v in guard.items()]
        ops += [{"op": "add", "path": f"/{root}/{k}", "value": v} for k, v in fields.items()]
        return await self.request("PATCH", path, json_body=ops, content_type="application/json-patch+json")

    async def watch(
        self, path: str, resource_version: str, params: dict[str, Any] | None = None, timeout_seconds: int = 300
    ) -> AsyncIterator[dict[str, Any]]:
        """Yields watch events from ``resource_version``; ends when the server closes the stream.

        Bookmarks are requested so a reconnect resumes close to where it left
        off. A 410 Gone (an expired resourceVersion) arrives as an ERROR
        event; callers re-list.
        """
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
            **(params or {}),
        }
        timeout = httpx.Timeout(30.0, read=timeout_seconds + 30.0)
        async with self._client.stream("GET", path, params=query, timeout=timeout) as response:
            if response.status_code >= 400:
                await response.aread()
                self._raise_for(response)
            async for line in response.aiter_lines():
                if line:
                    yield json.loads(line)

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
        from ._api import fmt_time, now

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
        except (ApiError, httpx.HTTPError) as e:
            logger.warning("could not post event %s for %s: %s", reason, meta["name"], e)


def background(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Fire-and-forget with a strong reference, so the task is not collected mid-flight."""
    task: asyncio.Task[Any] = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


_tasks: set[asyncio.Task[Any]] = set()
