"""Whether a process is alive: for the dev tooling's supervisor and for a worker that finds a Lease an
earlier process of its host left (``_worker/leasing.py``). A leaf: it imports nothing of Kubestep."""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # Field 3, after the parenthesised command name: Z is a zombie (exited,
    # not yet reaped by its parent), X is dead.
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")
