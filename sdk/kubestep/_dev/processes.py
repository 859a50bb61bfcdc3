"""Is a pid alive, and what is its command line (a recycled pid is never signalled)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return None
        # No procfs (macOS): ask ps. Good enough for the checks below.
        out = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True)
        return out.stdout.split() if out.returncode == 0 and out.stdout.strip() else None
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


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
