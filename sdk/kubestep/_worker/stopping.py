"""When a held run must stop, and when its grace period runs out: pure, the clock passed in.

A run stops for one reason, the first one noted: the user's cancel (``Requested``, from the irrevocable
``spec.cancelRequested`` or the operator's ``status.cancellation``) or its exhausted budget
(``RunTimeout``, on the worker's own monotonic clock). From that moment the step in flight, and any
cleanup the workflow runs, get the grace period; when it is over the worker interrupts whatever is still
running (the hard stop). A budget runs out *at its deadline*, so the grace period of a run timeout counts
from the deadline, not from when a boundary noticed it. The grace period can only shrink (the CRD lets a
user shorten it, to 0 for "stop now").

Times are the event loop's monotonic seconds (``loop.time()``); nothing here reads a clock.
"""

from __future__ import annotations

import dataclasses
import enum

from .. import _protocol as api


@dataclasses.dataclass
class StopRules:
    grace_seconds: float
    budget_deadline: float | None = None  # when the running segment's budget runs out
    reason: str | None = None  # why the run must stop: api.StopReason.REQUESTED or api.StopReason.RUN_TIMEOUT
    stopped_at: float | None = None  # when the grace period started

    def note(self, reason: str, at: float) -> bool:
        """Records a stop; the first reason wins. True if this call made the run stop."""
        if self.reason is not None:
            return False
        self.reason, self.stopped_at = reason, at
        return True

    def check(self, now: float) -> str | None:
        """The reason to stop at ``now``, noting an exhausted budget (as of its deadline)."""
        if self.reason is None and self.budget_deadline is not None and now >= self.budget_deadline:
            self.note(api.StopReason.RUN_TIMEOUT, self.budget_deadline)
        return self.reason

    def shorten_grace(self, seconds: float) -> bool:
        """The user shortened the grace period; True if it changed."""
        if seconds < self.grace_seconds:
            self.grace_seconds = seconds
            return True
        return False

    @property
    def hard_stop_at(self) -> float | None:
        """When whatever still runs is interrupted; None while the run is not stopping."""
        return None if self.stopped_at is None else self.stopped_at + self.grace_seconds

    def hard_stopped(self, now: float) -> bool:
        at = self.hard_stop_at
        return at is not None and now >= at


class Verdict(enum.Enum):
    """What a step boundary does."""

    GO_ON = "go on"
    LOST = "lost"  # another holder has the run: unwind without writing
    GRACE_EXPIRED = "grace period expired"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed out"
    HAND_BACK = "hand back"  # the worker is shutting down (SIGTERM)


def at_boundary(
    rules: StopRules, now: float, *, lost: bool, handback: bool, hard_stopped: bool, in_cleanup: bool
) -> Verdict:
    """The rule at a step boundary, in this order: a lost run unwinds (its new holder carries on);
    after the grace period everything stops; inside a cleanup scope nothing else stops the cleanup;
    a stop (the first reason noted, cancel or budget) ends the run; and only a run that is not
    stopping is handed back, so a shutdown never turns a cancel or a timeout into a re-queue."""
    rules.check(now)  # an exhausted budget is noted as of its deadline
    if lost:
        return Verdict.LOST
    if hard_stopped:
        return Verdict.GRACE_EXPIRED
    if in_cleanup:
        return Verdict.GO_ON
    if rules.reason == api.StopReason.REQUESTED:
        return Verdict.CANCELLED
    if rules.reason == api.StopReason.RUN_TIMEOUT:
        return Verdict.TIMED_OUT
    return Verdict.HAND_BACK if handback else Verdict.GO_ON
