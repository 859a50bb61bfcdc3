"""A small fault-injecting TCP proxy in front of the apiserver, on loopback only: what a flaky network,
a load balancer that drops long requests, or an apiserver restart does to a watch, done on purpose.

It forwards bytes (TLS passes through untouched: the apiserver's certificate names 127.0.0.1) and, on
command, cuts every connection it carries (``cut``) or refuses new ones (``refusing``). The informer
tests (``tests/test_informer_faults.py``) and the before/after benchmark (``bench/informer_faults.py``)
drive it."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from urllib.parse import urlsplit

import yaml


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.refusing = False  # close every new connection at once
        self.connections = 0  # accepted and forwarded
        self.refused = 0
        self.cuts = 0  # connections ended by ``cut``
        self._live: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @classmethod
    def for_kubeconfig(cls, kubeconfig: Path) -> FaultProxy:
        server = _server_of(kubeconfig)
        parts = urlsplit(server)
        return cls(parts.hostname or "127.0.0.1", parts.port or 443)

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> int:
        """Ends every connection the proxy carries, in both directions, mid-stream."""
        live = list(self._live)
        for writer in live:
            with contextlib.suppress(Exception):
                writer.transport.abort()  # a reset, not a polite close
        self._live.clear()
        self.cuts += len(live) // 2  # each connection has two sides
        return len(live) // 2

    def kubeconfig(self, original: Path) -> Path:
        """A copy of ``original`` that reaches the apiserver through this proxy (written beside it, so
        relative certificate paths still resolve)."""
        config = yaml.safe_load(original.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
        path = original.with_name(f"{original.stem}-proxied-{self.port}.yaml")
        path.write_text(yaml.safe_dump(config))
        return path

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._live.update((writer, up_writer))
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._live.discard(w)
                w.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError, ConnectionError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    writer.transport.abort()  # one side ended: end the other, so neither hangs half-open


def _server_of(kubeconfig: Path) -> str:
    config = yaml.safe_load(kubeconfig.read_text())
    return str(config["clusters"][0]["cluster"]["server"])
