"""Operator and worker processes for the end-to-end tests.

Locally there is no kubelet, so workers are processes that identify
themselves as a pod through POD_NAME / POD_NAMESPACE, exactly the variables
the chart sets from the downward API. With KUBESTEP_TEST_KUBECONFIG (kind),
the operator and workers already run as pods and tests that start, stop or
kill processes are skipped on kind only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

LEASE_SECONDS = 2  # short, so "worker gone" is detected quickly in tests
E2E = bool(os.environ.get("KUBESTEP_TEST_KUBECONFIG"))


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._file = open(log, "ab")
        self.popen = subprocess.Popen(args, env=env, stdout=self._file, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 20) -> int | None:
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.popen.wait(5)
        finally:
            self._file.close()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(5)
        self._file.close()

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def _env(kubeconfig: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"KUBECONFIG": str(kubeconfig), "KUBESTEP_LEASE_SECONDS": str(LEASE_SECONDS),
                "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def start_operator(kubeconfig: Path, logs: Path, namespaces: list[str] | None = None) -> Proc:
    args = [sys.executable, "-m", "kubestep._cli", "operator"]
    args += [f"--namespace={n}" for n in namespaces] if namespaces else ["--all-namespaces"]
    return Proc(args, _env(kubeconfig), logs / f"operator-{uuid.uuid4().hex[:6]}.log")


def start_worker(kubeconfig: Path, logs: Path, namespace: str, name: str | None = None,
                 module: str = "kubestep.examples", concurrency: int = 10) -> Proc:
    name = name or f"worker-{uuid.uuid4().hex[:6]}"
    env = _env(kubeconfig, {"POD_NAME": name, "POD_NAMESPACE": namespace})
    args = [sys.executable, "-m", "kubestep._cli", "worker", module, f"--concurrency={concurrency}"]
    proc = Proc(args, env, logs / f"{namespace}-{name}.log")
    proc.name = name  # type: ignore[attr-defined]
    return proc


def wait_until(predicate, timeout: float = 30, interval: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
