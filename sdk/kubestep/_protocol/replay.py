"""The replay rule: a resumed run's code must match its recorded history (pure).

The code reaches every recorded step again before it starts a new one, and in the order they ran
where they ran in sequence (a recorded step that ended before another started must be reached
first; steps that ran together, as with ``asyncio.gather``, in any order). A key recorded as another
kind of step breaks it too, and so does returning while a recorded step is unreached. Temporal calls
a breach non-determinism. Both runtimes apply it: the worker (``_worker/ledger.py``) and
``kubestep.testing``, so a workflow's own unit tests catch what production would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from .._errors import ReplayMismatch

# Turns of the event loop a new step waits for steps started with it (asyncio.gather) to reach theirs.
SIBLING_TURNS = 3
KINDS = {"Run": "step", "Wait": "wait", "Event": "wait for an event"}
VERBS = {"Run": "starts step", "Wait": "waits at", "Event": "waits for an event at"}


def _ended(rec: dict[str, Any]) -> str:
    """When a record's step ended (a wait: when it began), as written (one RFC 3339 format, so the
    strings compare as the times do)."""
    return str(rec.get("finishedAt") or rec.get("startedAt") or "~")


class Replay:
    """The records a claim found, in the order their steps ended, and which the code has reached."""

    def __init__(self, records: Iterable[dict[str, Any]]) -> None:
        self.unreached: dict[str, dict[str, Any]] = {}
        for rec in records:
            self.unreached.pop(rec["key"], None)  # a key recorded again counts where it was last
            self.unreached[rec["key"]] = rec

    def reach(self, key: str, kind: str, rec: dict[str, Any], what: str) -> None:
        """The code reached recorded ``rec`` (of ``key``) doing ``what``; raises on a breach."""
        if rec["kind"] != kind:
            raise ReplayMismatch(
                f"replay mismatch: {key!r} is recorded as a {KINDS.get(rec['kind'], rec['kind'])}, but the code "
                f"now makes it a {KINDS.get(kind, kind)}"
            )
        first = self.first_unreached()
        if first is not None and first["key"] != key and _ended(first) < str(rec.get("startedAt") or ""):
            # The oldest unreached record ended before this one started: the code ran them in
            # sequence then, and reaches them out of order now.
            raise self.mismatch(what)  # type: ignore[misc]
        self.unreached.pop(key, None)

    def first_unreached(self) -> dict[str, Any] | None:
        return next(iter(self.unreached.values()), None)

    def mismatch(self, what: str) -> ReplayMismatch | None:
        """The error for the code doing ``what`` (e.g. "starts step 'b'", "returns") while a
        recorded step is unreached, or None."""
        rec = self.first_unreached()
        if rec is None:
            return None
        return ReplayMismatch(
            f"replay mismatch: the history records {KINDS.get(rec['kind'], rec['kind'])} {rec['key']!r} "
            f"({rec['state']}) next, but the code {what} instead; the workflow's code changed since the run "
            "started, or it branches on something other than its input and step outputs"
        )


async def before_new_step(replay: Replay, what: str) -> None:
    """A call of a key with no record is about to start a new step: first let steps started
    together with it reach their calls, then raise if a recorded step is still unreached."""
    if not replay.unreached:
        return
    for _ in range(SIBLING_TURNS):
        await asyncio.sleep(0)
    mismatch = replay.mismatch(what)
    if mismatch is not None:
        raise mismatch
