"""A PostgreSQL server as a local process, for the tests and benchmarks of the Postgres step store.

Like the control plane (``controlplane.py``), a real server rather than a fake: the store's
statements (``unnest`` inserts, ``ON CONFLICT``, advisory locks) and its outage handling are only
tested against the real thing. It comes from Debian's ``postgresql`` package (``make test``
installs it): ``initdb`` into a fresh directory, then ``postgres`` on a free port of 127.0.0.1, with
trust authentication for the local user ``kubestep`` and no fsync (a test server: an OS crash is not
what the tests simulate; stopping and killing the server is, and synchronous commit stays on).

Postgres refuses to run as root. As root (CI is), the server runs as the ``postgres`` system user
the package creates, and the directory is handed to it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import ControlPlaneError

USER = "kubestep"  # the database role the tests connect as
DATABASE = "postgres"


def bindir() -> Path:
    """Where ``initdb`` and ``postgres`` are: ``$KUBESTEP_POSTGRES_BIN``, else the newest of Debian's
    ``/usr/lib/postgresql/*/bin``, else ``pg_config --bindir``."""
    explicit = os.environ.get("KUBESTEP_POSTGRES_BIN")
    if explicit:
        return Path(explicit)
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0
    )
    if debian and (debian[-1] / "initdb").exists():
        return debian[-1]
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True).stdout.strip())
        if (found / "initdb").exists():
            return found
    raise ControlPlaneError(
        "no PostgreSQL server found (initdb, postgres): install Debian's postgresql "
        "(apt-get install postgresql; `make test` does), or set KUBESTEP_POSTGRES_BIN"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalPostgres:
    """One server in its own directory; ``start``/``stop`` may be called again (an outage)."""

    def __init__(self, root: Path | None = None, port: int | None = None) -> None:
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix="kubestep-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "run"
        self.log = self.root / "postgres.log"
        self.port = port or _free_port()
        self.bin = bindir()
        self._proc: subprocess.Popen[bytes] | None = None
        # Postgres will not run as root: run it as the package's system user then.
        self._user = "postgres" if os.geteuid() == 0 else None

    @property
    def dsn(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def _run_as(self) -> dict[str, object]:
        if self._user is None:
            return {}
        entry = pwd.getpwnam(self._user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def init(self) -> None:
        """``initdb`` (once)."""
        if (self.data / "PG_VERSION").exists():
            return
        self.sockets.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            for path in (self.root, self.sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            cwd=self.root,
            **self._run_as(),  # type: ignore[call-overload]
        )

    def start(self, timeout: float = 30.0) -> None:
        """Starts the server (``init`` first if needed) and returns once it accepts connections."""
        self.init()
        if self.running:
            return
        log = open(self.log, "ab")  # the server's stdout for its whole life
        self._proc = subprocess.Popen(
            [
                str(self.bin / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.sockets),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            start_new_session=True,  # a test's Ctrl-C is not the server's
            **self._run_as(),  # type: ignore[call-overload]
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ControlPlaneError(f"postgres exited with {self._proc.returncode}: {self.tail()}")
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d", DATABASE],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise ControlPlaneError(f"postgres did not accept connections within {timeout:g} s: {self.tail()}")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """A fast shutdown (SIGINT: open connections are cut, as in a failover or a restart)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def destroy(self) -> None:
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running(root: Path | None = None) -> Iterator[LocalPostgres]:
    """A started server, stopped and removed afterwards."""
    server = LocalPostgres(root)
    try:
        server.start()
        yield server
    finally:
        server.destroy()
