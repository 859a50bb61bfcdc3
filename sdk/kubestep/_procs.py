"""Process helpers: whether a process is alive (for the dev tooling's supervisor and for a worker that
finds a Lease an earlier process of its host left, ``_worker/leasing.py``), the start-up heap
frozen out of the garbage collector's walks, and fewer young collections for the worker. A leaf: it
imports nothing of Kubestep."""

from __future__ import annotations

import gc
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


def freeze_heap() -> None:
    """Puts every object alive now out of the cyclic garbage collector's reach (``gc.freeze``).

    For a long-running process (worker, operator, server) once it has imported what it runs: the
    modules, classes and functions imported at start-up (~49,000 objects in a worker, ~65,000 in the
    operator) never become garbage, yet every full collection walked them all again: 30–40 ms of a
    full collection's time at idle on this machine, and 55–160 ms under load, a pause in which no
    watch event, cancel or ending is handled. Frozen, a full collection walks only what was made
    since."""
    gc.collect()
    gc.freeze()


YOUNG_THRESHOLD = 7000  # gen-0 collections start after this many net new containers (CPython's: 700)


def fewer_collections() -> None:
    """Raises the young generation's threshold from CPython's 700 to ``YOUNG_THRESHOLD``.

    For a worker at 1,000+ steps/s: every step allocates and frees a few hundred containers (its
    task, its record, the batch's JSON), so some 700 are always alive and young, and at 700 the
    collector ran ~33 young collections a second (1.0–1.9 ms each), every tenth a gen-1 and every
    hundredth a full one (25–50 ms), in which nothing else in the process runs: 6–8 % of the
    worker's time. Bursts of endings (ten runs timing out together) allocate most and so set them
    off just then. At this threshold 30 s of cancels at the load saw 0–3 young collections and no
    full one, and the worker's RSS was the same (132–149 MB against 141 MB); the slowest of 20 runs
    timing out ten at a time was seen ended 55–146 ms past its deadline in 8 windows (median 73),
    against 76–217 ms in 8 at 700 (median 115): lower, though the endings' own writes remain. Cycles
    wait a little longer to be freed; everything else goes at once by reference counting
    (``bench/README.md``, issue 19)."""
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
