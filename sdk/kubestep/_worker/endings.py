"""How a held run ends, as the holder writes it: pure builders over what the holder knows.

The transitions themselves are the protocol's (``_protocol/transitions.py``); here is what only the
holder can say: which step the run stopped after, what the grace period cut off, when it noticed
a user's cancel, and what a hand-back becomes when the budget ran out on the wall clock first."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from .. import _protocol as api


@dataclasses.dataclass(frozen=True)
class Holder:
    """What the holder knows of the run as it ends."""

    worker: str
    obj: dict[str, Any]  # the run as last seen (spec, metadata with managedFields)
    last_key: str | None = None  # the last step of the work (not of the cleanup) that completed
    hard_stopped: bool = False
    interrupted: tuple[str, ...] = ()  # steps the end of the grace period cut off
    grace_seconds: float = 30.0
    audited: bool = False  # the canceller annotation is vouched for (``api.cancel_requester``)

    @property
    def generation(self) -> int | None:
        generation = self.obj["metadata"].get("generation")
        return None if generation is None else int(generation)

    def stopped_after(self) -> str:
        if self.hard_stopped:
            cut = ", ".join(repr(k) for k in self.interrupted) or "the workflow"
            were = "was" if len(self.interrupted) <= 1 else "were"
            return f"; {cut} did not finish within the grace period of {self.grace_seconds:g} s and {were} interrupted"
        return f" after step {self.last_key!r}" if self.last_key else " before its first step"


def cancelled(
    status: dict[str, Any], holder: Holder, reason: str, noticed: dt.datetime | None, at: dt.datetime
) -> api.Patch:
    """Cancelled by its holder: the operator's cancellation if it wrote one, else the stop the holder
    noted itself (a user's cancel as of when it noticed it; a run timeout as of its deadline)."""
    canc: api.Cancellation = dict(status.get("cancellation") or {})  # type: ignore[assignment]
    if not canc.get("reason"):
        canc = api.stop_record(
            reason,
            noticed or at,
            deadline=api.parse_time(status.get("deadline")),
            note=api.cancel_note(holder.obj, holder.audited),
        )
    after = holder.stopped_after()
    if canc["reason"] == api.StopReason.RUN_TIMEOUT:
        budget = (holder.obj.get("spec") or {}).get("runTimeoutSeconds")
        message = f"run exceeded runTimeoutSeconds={budget} of continuous running time; stopped{after}"
    else:
        said = f" ({canc['message']})" if canc.get("message") else ""
        where = "" if holder.hard_stopped else " at the step boundary"
        message = f"cancellation requested{said}; stopped{where}{after}"
    return api.cancelled(
        status.get("conditions"),
        canc,
        by=holder.worker,
        message=message,
        at=at,
        generation=holder.generation,
        hard_stop=holder.hard_stopped,
    )


def wait_record(key: str, wake_at: dt.datetime | None, topic: str | None, at: dt.datetime) -> dict[str, Any]:
    record: dict[str, Any] = {
        "key": key,
        "kind": "Event" if topic else "Wait",
        "state": api.StepState.WAITING,
        "startedAt": api.fmt_time(at),
    }
    if wake_at:
        record["wakeAt"] = api.fmt_time(wake_at)
    if topic:
        record["topic"] = topic
    return record


def waiting_message(key: str, wake_at: dt.datetime | None, topic: str | None, children: tuple[str, ...] = ()) -> str:
    until = f" until {api.fmt_time(wake_at)}" if wake_at else ""
    if children:
        return f"waiting on {key!r}: {len(children)} child run{'s' if len(children) > 1 else ''} to end"
    return f"waiting on event {topic!r}{until}" if topic else f"waiting on {key!r}{until}"


def handed_back(status: dict[str, Any], holder: Holder, at: dt.datetime) -> api.Patch:
    """The holder shuts down (SIGTERM): re-queued with what is left of its budget, or Cancelled
    (RunTimeout) if the budget ran out on the wall clock before the holder's own clock noticed."""
    if api.budget_spent(status, at):
        stop = api.stop_record(api.StopReason.RUN_TIMEOUT, at, deadline=api.parse_time(status.get("deadline")))
        return api.cancelled(
            status.get("conditions"),
            stop,
            by=holder.worker,
            message=f"worker {holder.worker} shut down after the run's budget ran out",
            at=at,
            generation=holder.generation,
        )
    return api.requeued(
        api.Reason.HANDED_BACK,
        f"worker {holder.worker} shut down; the run resumes by replay",
        at,
        deadline=api.parse_time(status.get("deadline")),
    )
