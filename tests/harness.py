"""Operator and worker processes for the end-to-end tests.

With KUBESTEP_TEST_KUBECONFIG (kind), the operator and workers already run as
pods; tests that start, stop or kill processes are then skipped on kind only.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubestep._dev import local
from kubestep._dev.local import Proc

LEASE_SECONDS = 2  # short, so "worker gone" is detected quickly in tests
E2E = bool(os.environ.get("KUBESTEP_TEST_KUBECONFIG"))

start_operator = functools.partial(local.start_operator, lease_seconds=LEASE_SECONDS)
start_worker = functools.partial(local.start_worker, lease_seconds=LEASE_SECONDS)



def wait_until(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.1, what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


__all__ = ["E2E", "LEASE_SECONDS", "Proc", "start_operator", "start_worker", "wait_until"]
