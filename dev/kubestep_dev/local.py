"""The operator and workers as local processes, for the demo, the benchmark and the tests.

Locally there is no kubelet, so a worker is a process that identifies itself
as a pod through POD_NAME / POD_NAMESPACE, exactly the variables the Helm
chart sets from the downward API. Everything above the kubelet is real.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path


class Proc:
    """A child process in its own session, logging to a file."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self.env = env
        self.started = time.monotonic()
        log.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(log, "ab")
        self.popen = subprocess.Popen(
            list(args), env=env, stdout=self._file, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (a worker finishes its steps in flight and hands runs back), then SIGKILL."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.popen.wait(5)
        finally:
            self._file.close()

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def _env(kubeconfig: Path, lease_seconds: int | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"})
    if lease_seconds is not None:
        env["KUBESTEP_LEASE_SECONDS"] = str(lease_seconds)
    env.update(extra or {})
    return env


def start_operator(
    kubeconfig: Path,
    logs: Path,
    namespaces: Sequence[str] | None = None,
    lease_seconds: int | None = None,
    env: dict[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> Proc:
    """``kubestep operator`` watching ``namespaces`` (kopf globs allowed), or all of them."""
    args = [sys.executable, "-m", "kubestep._cli", "operator", *extra_args]
    args += [f"--namespace={n}" for n in namespaces] if namespaces else ["--all-namespaces"]
    name = f"operator-{uuid.uuid4().hex[:6]}"
    return Proc(name, args, _env(kubeconfig, lease_seconds, env), logs / f"{name}.log")


def start_worker(
    kubeconfig: Path,
    logs: Path,
    namespace: str,
    name: str | None = None,
    module: str = "kubestep.examples",
    concurrency: int = 10,
    lease_seconds: int | None = None,
    env: dict[str, str] | None = None,
) -> Proc:
    """``kubestep worker MODULE`` posing as pod ``name`` in ``namespace``."""
    name = name or f"worker-{uuid.uuid4().hex[:6]}"
    env = _env(kubeconfig, lease_seconds, {"POD_NAME": name, "POD_NAMESPACE": namespace, **(env or {})})
    args = [sys.executable, "-m", "kubestep._cli", "worker", module, f"--concurrency={concurrency}"]
    return Proc(name, args, env, logs / f"{namespace}-{name}.log")
