"""Is a pid alive, and what is its command line (a recycled pid is never signalled)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from kubestep._procs import pid_alive

__all__ = ["pid_alive", "proc_cmdline"]


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
