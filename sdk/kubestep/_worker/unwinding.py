"""How the worker unwinds a workflow without ending the run: control flow, not errors.

Both derive from ``BaseException`` so that ``except Exception`` in workflow code cannot swallow
them (like ``StopExecution``, which unwinds a run that must stop)."""

from __future__ import annotations

import datetime as dt


class Suspend(BaseException):
    """At ``wait_for`` / ``wait_for_event`` / ``wait_children``: the run is released until ``wake_at``
    (None: until its event arrives, or every one of its ``children`` has ended)."""

    def __init__(
        self, key: str, wake_at: dt.datetime | None, topic: str | None = None, children: tuple[str, ...] = ()
    ) -> None:
        self.key, self.wake_at, self.topic, self.children = key, wake_at, topic, children


class Release(BaseException):
    """Without a terminal status: hand-back, lost run, or (``held``) a status write that kept
    failing on a run we still hold (``cause``: why)."""

    def __init__(self, why: str, held: bool = False, cause: BaseException | None = None) -> None:
        self.why, self.held, self.cause = why, held, cause


CONTENDED = "too many write conflicts"
