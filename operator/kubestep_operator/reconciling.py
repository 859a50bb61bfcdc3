"""What the operator does to one execution: a pure function of its state and the clock.

``decide()`` looks at a compact snapshot of an execution, the current time
and the liveness of worker Leases, and returns the single status transition
to make now (if any), the Event that tells it, and when to look again. It
has no I/O, so every rule is unit-tested without a cluster, and the same
function serves watch events and scheduler wake-ups alike (level-triggered:
handling the same state twice yields the same conditional write, which the
apiserver accepts at most once).

Who writes what:
  operator — Queued on creation; Cancelling with ``status.cancellation`` for
             a cancel request or an expired deadline; Cancelled directly when
             no worker holds the run (Queued, Waiting, or holder gone);
             Queued again when a wait is over or the holder vanished.
  worker   — Running (claim), steps, Waiting, Completed, Failed, Cancelled
             (acknowledging ``status.cancellation``), Queued on hand-back.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Callable
from typing import Any

from kubestep import _api as api

from .keys import RunKey

OPERATOR = "kubestep-operator"


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The fields of an execution the operator decides on (steps and payloads left out)."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    generation: int | None
    workflow: str
    cancel_requested: bool
    run_timeout_seconds: int | None
    phase: str | None
    worker: str | None
    deadline: dt.datetime | None
    wake_at: dt.datetime | None
    cancellation: dict[str, Any] | None
    conditions: tuple[dict[str, Any], ...]
    body_ref: dict[str, Any]  # apiVersion/kind/metadata for events

    @property
    def key(self) -> RunKey:
        return RunKey(self.namespace, self.name)

    @classmethod
    def from_body(cls, body: Any) -> Snapshot:
        meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
        return cls(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta.get("uid", ""),
            resource_version=meta["resourceVersion"],
            generation=meta.get("generation"),
            workflow=spec.get("workflow", ""),
            cancel_requested=bool(spec.get("cancelRequested")),
            run_timeout_seconds=spec.get("runTimeoutSeconds"),
            phase=status.get("phase"),
            worker=status.get("worker"),
            deadline=api.parse_time(status.get("deadline")),
            wake_at=api.parse_time(status.get("wakeAt")),
            cancellation=dict(status["cancellation"]) if status.get("cancellation") else None,
            conditions=tuple(dict(c) for c in status.get("conditions") or []),
            body_ref={
                "apiVersion": body.get("apiVersion", api.API_VERSION),
                "kind": body.get("kind", api.KIND),
                "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "resourceVersion")},
            },
        )

    def condition_list(self) -> list[dict[str, Any]]:
        return [dict(c) for c in self.conditions]


@dataclasses.dataclass(frozen=True)
class Liveness:
    """What the operator knows of a worker's Lease."""

    expires: dt.datetime
    workflows: frozenset[str]


@dataclasses.dataclass(frozen=True)
class Decision:
    patch: dict[str, Any] | None = None  # status fields to write
    # How the write is made conditional. None: on the snapshot's resourceVersion
    # (nobody else is writing). Otherwise these status fields must still hold
    # these values (a JSON patch with "test" operations): used while a worker
    # holds the run and writes a step every few milliseconds, where a
    # resourceVersion precondition would lose every race.
    guard: dict[str, Any] | None = None
    event: tuple[str, str, str] | None = None  # (type, reason, message)
    next_due: dt.datetime | None = None  # when to decide again without a new event


WorkerLookup = Callable[[str, str], Liveness | None]  # (namespace, worker) -> liveness


def _cond(s: Snapshot, type_: str, ok: bool, reason: str, message: str, at: dt.datetime) -> list[dict[str, Any]]:
    conditions = api.merge_conditions(
        s.condition_list(), api.condition(type_, ok, reason, message, at, s.generation)
    )
    return conditions


def _finish_cancelled(s: Snapshot, reason: str, message: str, at: dt.datetime) -> Decision:
    canc = dict(s.cancellation or {})
    if not canc.get("reason"):
        canc = {"reason": reason, "requestedAt": api.fmt_time(at)}
    canc.update(acknowledgedAt=api.fmt_time(at), acknowledgedBy=OPERATOR)
    status = api.finished_status({"conditions": s.condition_list()}, api.CANCELLED, canc["reason"], message, at,
                                 s.generation)
    return Decision(
        patch={**status, "cancellation": canc, "observedGeneration": s.generation},
        event=("Normal", api.CANCELLED, message),
    )


def served_by(s: Snapshot, live_workflows: frozenset[str] | None) -> bool:
    return live_workflows is None or s.workflow in live_workflows


def decide(
    s: Snapshot,
    now: dt.datetime,
    worker: WorkerLookup,
    live_workflows: frozenset[str] | None,
    lease_grace: dt.datetime,
) -> Decision:
    """The transition to make now. ``live_workflows`` is every workflow a live worker in the
    namespace serves (None when unknown); ``lease_grace`` is when a holder without a known
    Lease counts as gone (the operator's start plus one lease duration)."""
    phase = s.phase
    if phase in api.TERMINAL_PHASES:
        return Decision()

    if phase is None:  # just created
        if s.cancel_requested:
            return _finish_cancelled(s, api.REQUESTED, "cancelled before it started; no step ran", now)
        served = served_by(s, live_workflows)
        return Decision(
            patch={
                "phase": api.QUEUED,
                "reason": "Pending" if served else "NoWorker",
                "message": "waiting for a worker" if served else _no_worker(s),
                "observedGeneration": s.generation,
                "conditions": _cond(s, api.COND_SCHEDULED, False, "Pending" if served else "NoWorker",
                                    "waiting for a worker" if served else _no_worker(s), now),
            },
            event=("Normal", api.QUEUED, f"queued for workflow {s.workflow!r}")
            if served else ("Warning", "NoWorker", _no_worker(s)),
        )

    if s.cancel_requested and phase in (api.QUEUED, api.WAITING):
        where = "while queued; no step ran" if phase == api.QUEUED and not s.worker else f"while {phase.lower()}"
        return _finish_cancelled(s, api.REQUESTED, f"cancelled {where}", now)

    if phase in api.HELD_PHASES:
        holder = worker(s.namespace, s.worker or "")
        expires = holder.expires if holder else lease_grace
        if now >= expires:
            who = f"worker {s.worker!r} is gone (its lease expired)"
            timed_out = s.deadline is not None and now >= s.deadline
            if s.cancellation or s.cancel_requested or timed_out:
                reason = (s.cancellation or {}).get("reason") or (
                    api.REQUESTED if s.cancel_requested else api.RUN_TIMEOUT)
                return _finish_cancelled(s, reason, f"{who}; finished the cancellation ({reason})", now)
            return Decision(
                patch={"phase": api.QUEUED, "reason": "WorkerLost", "message": f"{who}; the run resumes by replay",
                       "worker": None, "deadline": None, "segmentStartedAt": None,
                       "observedGeneration": s.generation},
                event=("Warning", "WorkerLost", f"{who}; re-queued, a worker resumes it by replay"),
            )
        if phase == api.RUNNING and not s.cancellation:
            if s.cancel_requested:
                return Decision(
                    patch={"phase": api.CANCELLING, "reason": api.REQUESTED,
                           "message": f"cancellation requested; worker {s.worker} stops at the next step boundary",
                           "cancellation": {"reason": api.REQUESTED, "requestedAt": api.fmt_time(now)},
                           "observedGeneration": s.generation},
                    guard={"phase": api.RUNNING, "worker": s.worker},
                    event=("Normal", "CancelRequested", f"signalled worker {s.worker}; stops at the next step boundary"),
                )
            if s.deadline is not None and now >= s.deadline:
                return Decision(
                    patch={"phase": api.CANCELLING, "reason": api.RUN_TIMEOUT,
                           "message": f"runTimeoutSeconds={s.run_timeout_seconds} exhausted; "
                                      f"worker {s.worker} stops at the next step boundary",
                           "cancellation": {"reason": api.RUN_TIMEOUT, "requestedAt": api.fmt_time(s.deadline)},
                           "observedGeneration": s.generation},
                    guard={"phase": api.RUNNING, "worker": s.worker},
                    event=("Warning", api.RUN_TIMEOUT,
                           f"run budget of {s.run_timeout_seconds}s exhausted; signalled worker {s.worker}"),
                )
        due = [expires]
        if phase == api.RUNNING and s.deadline is not None and not s.cancellation:
            due.append(s.deadline)
        return Decision(next_due=min(due))

    if phase == api.WAITING:
        if s.wake_at is None or now >= s.wake_at:
            return Decision(
                patch={"phase": api.QUEUED, "reason": "WaitOver", "message": "wait is over; waiting for a worker",
                       "wakeAt": None, "observedGeneration": s.generation},
                event=("Normal", "WaitOver", "wait is over; re-queued for a worker"),
            )
        return Decision(next_due=s.wake_at)

    if phase == api.QUEUED:
        served = served_by(s, live_workflows)
        current = next((c for c in s.conditions if c.get("type") == api.COND_SCHEDULED), None)
        want = ("False", "Pending" if served else "NoWorker")
        if current is None or (current.get("status"), current.get("reason")) != want:
            message = "waiting for a worker" if served else _no_worker(s)
            return Decision(
                patch={"reason": want[1], "message": message, "observedGeneration": s.generation,
                       "conditions": _cond(s, api.COND_SCHEDULED, False, want[1], message, now)},
                event=None if served else ("Warning", "NoWorker", message),
            )
    return Decision()


class Urgency(enum.IntEnum):
    """How soon a decided write must be made; lower goes first (``writing.Backlog``)."""

    STOP = 0  # a cancel or an exhausted budget: Cancelling, Cancelled
    PROGRESS = 1  # a run moves on: wait over, worker lost
    ADMIT = 2  # a new run is queued, or its Scheduled condition refreshed


def urgency(s: Snapshot, d: Decision) -> Urgency:
    """Stopping runaway work comes first, even behind thousands of admissions."""
    if (d.patch or {}).get("phase") in (api.CANCELLING, api.CANCELLED):
        return Urgency.STOP
    if s.phase is None or s.phase == api.QUEUED:
        return Urgency.ADMIT
    return Urgency.PROGRESS


def _no_worker(s: Snapshot) -> str:
    return f"no live worker serves workflow {s.workflow!r} in namespace {s.namespace}; the run stays queued"
