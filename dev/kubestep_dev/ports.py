"""The TCP ports of one local control plane."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from .errors import ControlPlaneError


def env_port(name: str) -> int | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        port = int(value)
    except ValueError:
        raise ControlPlaneError(f"${name} must be a port number, got {value!r}") from None
    if not 0 < port < 65536:
        raise ControlPlaneError(f"${name} must be a port number, got {value!r}")
    return port


#: Environment variable that overrides each `Ports` field.
PORT_ENV_VARS: Mapping[str, str] = {
    "apiserver": "KUBESTEP_DEV_APISERVER_PORT",
    "etcd_client": "KUBESTEP_DEV_ETCD_CLIENT_PORT",
    "etcd_peer": "KUBESTEP_DEV_ETCD_PEER_PORT",
    "controller_manager": "KUBESTEP_DEV_CONTROLLER_MANAGER_PORT",
}


@dataclass(frozen=True)
class Ports:
    """TCP ports on 127.0.0.1 used by one control plane."""

    apiserver: int = 6443
    etcd_client: int = 2379
    etcd_peer: int = 2380
    controller_manager: int = 10257

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def free(cls) -> Ports:
        """Four distinct ports the kernel reports free right now (for tests)."""
        sockets: list[socket.socket] = []
        try:
            for _ in range(4):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind(("127.0.0.1", 0))
                sockets.append(s)
            a, b, c, d = (s.getsockname()[1] for s in sockets)
        finally:
            for s in sockets:
                s.close()
        return cls(apiserver=a, etcd_client=b, etcd_peer=c, controller_manager=d)


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Go listeners set SO_REUSEADDR too, so TIME_WAIT leftovers don't count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False
