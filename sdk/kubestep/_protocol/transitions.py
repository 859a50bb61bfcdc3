"""One pure builder per status transition, called by both writers.

Each builder returns the status fields to write (``None`` clears a field); the writer adds its own
precondition (a resourceVersion, or ``test`` operations) and, for the worker, its step records.
``TRANSITIONS`` says which writer may make which transition: ``tests/unit/test_protocol.py`` checks
the table against the builders, and ``docs/design.md`` ("who writes what") against both.

Two rules live here because both writers apply them:

* **The budget counts running time only, per segment.** A claim gives the run ``runTimeoutSeconds``
  from now, or what is left of it when the run was re-queued mid-segment (its holder was lost, shut
  down or let go: ``budgetRemainingSeconds``); a wait ends the segment and the next claim starts a
  fresh one.
* **A run that is let go of never escapes a stop** (``pending_stop``): if it was told to stop, or its
  budget is spent, it ends Cancelled instead of being re-queued with a fresh budget.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Callable
from typing import Any, TypeVar

from .cancels import cancel_request
from .clock import duration, fmt_time, later, parse_time
from .records import Cancellation, Condition, Status
from .vocabulary import ConditionType, Phase, Reason, StopReason

Patch = dict[str, Any]  # status fields to write; None clears one


class Writer(enum.StrEnum):
    OPERATOR = "operator"
    WORKER = "worker"


@dataclasses.dataclass(frozen=True)
class Transition:
    name: str
    to: Phase | None  # None: the phase does not change
    writers: frozenset[Writer]
    reasons: frozenset[str]  # the status reasons it may write


TRANSITIONS: dict[str, Transition] = {}
_F = TypeVar("_F", bound=Callable[..., Patch])


def _transition(to: Phase | None, writers: set[Writer], reasons: set[str]) -> Callable[[_F], _F]:
    def register(fn: _F) -> _F:
        TRANSITIONS[fn.__name__] = Transition(fn.__name__, to, frozenset(writers), frozenset(reasons))
        return fn

    return register


# ----- conditions -----------------------------------------------------------------------------


def condition(
    type_: str, status: bool, reason: str, message: str, at: dt.datetime, generation: int | None
) -> Condition:
    cond: Condition = {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": fmt_time(at),
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def merge_conditions(existing: list[Condition] | list[dict[str, Any]] | None, *new: Condition) -> list[Condition]:
    """Replace conditions by type, keeping lastTransitionTime when the status did not change."""
    by_type: dict[str, Any] = {c["type"]: c for c in existing or []}
    for c in new:
        old = by_type.get(c["type"])
        if old is not None and old.get("status") == c["status"]:
            c = {**c, "lastTransitionTime": old.get("lastTransitionTime", c["lastTransitionTime"])}
        by_type[c["type"]] = c
    return list(by_type.values())


def _generation(generation: int | None) -> Patch:
    return {} if generation is None else {"observedGeneration": generation}


# ----- stops and budgets ----------------------------------------------------------------------


def stop_record(
    reason: StopReason | str,
    at: dt.datetime,
    *,
    deadline: dt.datetime | None = None,
    note: Cancellation | None = None,
) -> Cancellation:
    """``status.cancellation`` for a stop first noted at ``at``. A run timeout happened at its
    deadline, whoever notices it and whenever: that is its ``requestedAt``."""
    if reason == StopReason.RUN_TIMEOUT:
        return {"reason": StopReason.RUN_TIMEOUT, "requestedAt": fmt_time(deadline or at)}
    return {**(note or {}), "reason": StopReason(reason), "requestedAt": fmt_time(at)}


def budget_spent(status: Status | dict[str, Any], at: dt.datetime) -> bool:
    deadline = parse_time(status.get("deadline"))
    return deadline is not None and at >= deadline


def pending_stop(obj: dict[str, Any], at: dt.datetime, audited: bool = False) -> Cancellation | None:
    """The stop a held run must end with if its holder lets go of it now: the recorded
    cancellation, else the user's irrevocable cancel, else a spent budget; None if it may resume."""
    status = obj.get("status") or {}
    if status.get("cancellation"):
        return dict(status["cancellation"])  # type: ignore[return-value]
    if (obj.get("spec") or {}).get("cancelRequested"):
        return cancel_request(obj, at, audited)
    if budget_spent(status, at):
        return stop_record(StopReason.RUN_TIMEOUT, at, deadline=parse_time(status.get("deadline")))
    return None


def segment_budget(spec: dict[str, Any], status: Status | dict[str, Any]) -> float | None:
    """Seconds of running time the segment a claim starts may use: what a re-queued segment had
    left, else the whole ``runTimeoutSeconds``; None without a budget."""
    budget = duration(spec.get("runTimeoutSeconds"))  # clamped: a huge value once made every claim raise
    if not budget:
        return None
    left = duration(status.get("budgetRemainingSeconds"))
    return budget if left is None else min(left, budget)


# ----- Queued ---------------------------------------------------------------------------------


@_transition(None, {Writer.OPERATOR}, {Reason.PENDING, Reason.NO_WORKER, Reason.WORKFLOW_CONFLICT})
def queue_refreshed(
    conditions: list[Condition] | None,
    *,
    served: bool,
    message: str,
    at: dt.datetime,
    generation: int | None,
    conflict: bool = False,
) -> Patch:
    """A queued run's reason and ``Scheduled`` condition: is a live worker serving its workflow (and
    only one code: ``conflict`` when two modules serve its id in the namespace)?"""
    reason = Reason.WORKFLOW_CONFLICT if conflict else Reason.PENDING if served else Reason.NO_WORKER
    return {
        "reason": reason,
        "message": message,
        "conditions": merge_conditions(
            conditions, condition(ConditionType.SCHEDULED, False, reason, message, at, generation)
        ),
        **_generation(generation),
    }


@_transition(Phase.QUEUED, {Writer.OPERATOR}, {Reason.PENDING, Reason.NO_WORKER})
def queued(
    conditions: list[Condition] | None, *, served: bool, message: str, at: dt.datetime, generation: int | None
) -> Patch:
    """(new) → Queued: admitted. The queue timeout counts from ``queuedAt``."""
    return {
        "phase": Phase.QUEUED,
        "queuedAt": fmt_time(at),
        **queue_refreshed(conditions, served=served, message=message, at=at, generation=generation),
    }


@_transition(Phase.QUEUED, {Writer.OPERATOR}, {Reason.WAIT_OVER, Reason.EVENT_ARRIVED, Reason.CHILDREN_ENDED})
def woken(reason: Reason, message: str, at: dt.datetime, generation: int | None) -> Patch:
    """Waiting → Queued: the wait is over or its event arrived. The next claim starts a fresh budget."""
    return {
        "phase": Phase.QUEUED,
        "reason": reason,
        "message": message,
        "queuedAt": fmt_time(at),
        "wakeAt": None,
        "budgetRemainingSeconds": None,
        **_generation(generation),
    }


@_transition(Phase.QUEUED, {Writer.OPERATOR, Writer.WORKER}, {Reason.WORKER_LOST, Reason.HANDED_BACK, Reason.REQUEUED})
def requeued(
    reason: Reason, message: str, at: dt.datetime, *, deadline: dt.datetime | None, generation: int | None = None
) -> Patch:
    """Running → Queued mid-segment: the holder was lost (operator), shut down or could not go on
    (worker). The segment's unspent budget (to ``deadline``) goes with the run. Only for a run with
    no stop pending (``pending_stop``): a spent budget is never re-queued."""
    if deadline is not None and at >= deadline:
        raise ValueError("a run whose budget is spent is not re-queued: end it with cancelled()")
    left = None if deadline is None else round((deadline - at).total_seconds(), 3)
    return {
        "phase": Phase.QUEUED,
        "reason": reason,
        "message": message,
        "queuedAt": fmt_time(at),
        "worker": None,
        "deadline": None,
        "budgetRemainingSeconds": left,
        **_generation(generation),
    }


# ----- Running, Waiting -----------------------------------------------------------------------


@_transition(Phase.RUNNING, {Writer.WORKER}, {Reason.STARTED, Reason.RESUMED})
def claimed(
    spec: dict[str, Any],
    status: Status | dict[str, Any],
    *,
    worker: str,
    attempt: int,
    at: dt.datetime,
    generation: int | None,
) -> Patch:
    """Queued → Running: a worker holds the run; its segment's budget starts now."""
    seconds = segment_budget(spec, status)
    return {
        "phase": Phase.RUNNING,
        "reason": Reason.RESUMED if status.get("startedAt") else Reason.STARTED,
        "message": f"running on {worker}",
        "worker": worker,
        "attempt": attempt,
        "startedAt": status.get("startedAt") or fmt_time(at),
        "deadline": fmt_time(later(at, seconds)) if seconds is not None else None,
        "budgetRemainingSeconds": None,
        "wakeAt": None,
        "waitingFor": None,
        "conditions": merge_conditions(
            status.get("conditions"),
            condition(ConditionType.SCHEDULED, True, "Claimed", f"held by worker {worker}", at, generation),
        ),
    }


@_transition(Phase.WAITING, {Writer.WORKER}, {Reason.WAITING_FOR})
def waiting(
    key: str,
    message: str,
    *,
    wake_at: dt.datetime | None,
    topic: str | None = None,
    children: tuple[str, ...] | list[str] = (),
) -> Patch:
    """Running → Waiting: the worker lets go until ``wake_at``, the event, or until every child run in
    ``children`` has ended (the operator re-queues it then); the segment ends."""
    waiting_for: dict[str, Any] = {"key": key}
    if topic:
        waiting_for["topic"] = topic
    if children:
        waiting_for["children"] = list(children)
    return {
        "phase": Phase.WAITING,
        "reason": Reason.WAITING_FOR,
        "message": message,
        "worker": None,
        "deadline": None,
        "budgetRemainingSeconds": None,
        "waitingFor": waiting_for,
        "wakeAt": fmt_time(wake_at) if wake_at else None,
    }


# ----- stopping -------------------------------------------------------------------------------


@_transition(Phase.CANCELLING, {Writer.OPERATOR}, {Reason.REQUESTED, Reason.RUN_TIMEOUT})
def cancelling(stop: Cancellation, message: str, generation: int | None) -> Patch:
    """Running → Cancelling: the signal to the holder, which lets the step in flight finish."""
    return {
        "phase": Phase.CANCELLING,
        "reason": stop["reason"],
        "message": message,
        "cancellation": stop,
        **_generation(generation),
    }


def _finished(
    conditions: list[Condition] | None,
    phase: Phase,
    reason: str,
    message: str,
    at: dt.datetime,
    generation: int | None,
) -> Patch:
    """The fields every terminal transition writes, whoever writes it."""
    return {
        "phase": phase,
        "reason": reason,
        "message": message,
        "finishedAt": fmt_time(at),
        "deadline": None,
        "wakeAt": None,
        "budgetRemainingSeconds": None,
        "conditions": merge_conditions(
            conditions, condition(ConditionType.FINISHED, True, phase, message, at, generation)
        ),
        **_generation(generation),
    }


@_transition(
    Phase.CANCELLED,
    {Writer.OPERATOR, Writer.WORKER},
    {Reason.REQUESTED, Reason.RUN_TIMEOUT, Reason.QUEUE_TIMEOUT, Reason.GRACE_EXPIRED},
)
def cancelled(
    conditions: list[Condition] | None,
    stop: Cancellation,
    *,
    by: str,
    message: str,
    at: dt.datetime,
    generation: int | None,
    hard_stop: bool = False,
) -> Patch:
    """→ Cancelled, acknowledged by ``by`` (the holder, or the operator for a run nobody holds or
    whose holder is gone). After a hard stop the status says ``GracePeriodExpired``; the
    cancellation still says why the run was told to stop."""
    ack: Cancellation = {**stop, "acknowledgedAt": fmt_time(at), "acknowledgedBy": by}
    status_reason = Reason.GRACE_EXPIRED if hard_stop else stop["reason"]
    return {
        "cancellation": ack,
        **_finished(conditions, Phase.CANCELLED, status_reason, message[:1000], at, generation),
    }


# ----- Completed, Failed ----------------------------------------------------------------------


@_transition(Phase.COMPLETED, {Writer.WORKER}, {Reason.SUCCEEDED})
def completed(conditions: list[Condition] | None, result: Any, at: dt.datetime, generation: int | None) -> Patch:
    return {
        "result": result,
        **_finished(conditions, Phase.COMPLETED, Reason.SUCCEEDED, "workflow returned", at, generation),
    }


@_transition(Phase.FAILED, {Writer.WORKER}, {Reason.WORKFLOW_ERROR, Reason.WORKER_ERROR, Reason.REPLAY_MISMATCH})
def failed(
    conditions: list[Condition] | None,
    error: dict[str, Any],
    reason: Reason,
    message: str,
    at: dt.datetime,
    generation: int | None,
) -> Patch:
    """The workflow raised (``WorkflowError``), its code no longer matches its history
    (``ReplayMismatch``), or the worker cannot record it in a way replay would not repeat
    (``WorkerError``: a status too large to store)."""
    return {"error": error, **_finished(conditions, Phase.FAILED, reason, message[:1000], at, generation)}
