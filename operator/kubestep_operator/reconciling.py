"""What the operator does to one execution: a pure function of its state and the clock.

``decide()`` looks at a compact snapshot of an execution, the current time
and the liveness of worker Leases, and returns the single status transition
to make now (if any), the Event that tells it, and when to look again. It
has no I/O, so every rule is unit-tested without a cluster, and the same
function serves watch events and scheduler wake-ups alike (level-triggered:
handling the same state twice yields the same conditional write, which the
apiserver accepts at most once).

Who writes what: the table in ``docs/design.md``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Callable
from typing import Any

from kubestep import _protocol as api

from .keys import RunKey

OPERATOR = "kubestep-operator"
# How long a live holder gets to end a cancelled run (or one past its deadline) before the operator writes
# Cancelling. The cancel's time comes from managedFields, in whole seconds, so the holder gets between 1
# and 2 seconds; a deadline is exact, so 2.
HEAD_START = dt.timedelta(seconds=2)


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
    cancellation: api.Cancellation | None
    conditions: tuple[dict[str, Any], ...]
    body_ref: dict[str, Any]  # apiVersion/kind/metadata for events
    # What a user's cancel says (``spec.cancelReason``) and who asked: ``api.cancel_note``.
    cancel_note: api.Cancellation = dataclasses.field(default_factory=lambda: api.Cancellation())
    cancel_time: dt.datetime | None = None  # when the apiserver took the cancel (whole seconds)
    grace_seconds: float = 30.0
    queue_timeout_seconds: int | None = None
    queued_since: dt.datetime | None = None  # status.queuedAt, else the creation time
    waiting_for_topic: str | None = None
    event_ready: bool = False
    queue: str = ""  # spec.queue: only workers of this queue may run it ("": the default queue)  # an event the run waits for has arrived and is not consumed
    # Retention (``expires_at``): spec.ttlSecondsAfterFinished (None: the operator's default), when the
    # run finished (status.finishedAt), and whether it is being deleted already (metadata.deletionTimestamp).
    ttl_seconds_after_finished: int | None = None
    finished_at: dt.datetime | None = None
    deleting: bool = False
    # Child runs (``kubestep._protocol.family``): the parent's (name, uid), from the controller
    # ownerReference; the children a Waiting run waits for (``status.waitingFor.children``).
    parent: tuple[str, str] | None = None
    waiting_for_children: tuple[str, ...] = ()
    # Set by the controller from what it knows of the other runs (``Family``), not from this body:
    # why this run must stop because of its parent, and whether every child it waits for has ended.
    parent_stopped: str | None = None
    children_done: bool = False

    @property
    def key(self) -> RunKey:
        return RunKey(self.namespace, self.name)

    @classmethod
    def from_body(cls, body: Any, default_grace: float = 30.0, audited: bool = False) -> Snapshot:
        meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
        waiting = (status.get("waitingFor") or {}) if status.get("phase") == api.Phase.WAITING else {}
        topic = waiting.get("topic")
        children = waiting.get("children") or ()
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
            cancellation=_cancellation(status.get("cancellation")),
            conditions=tuple(dict(c) for c in status.get("conditions") or []),
            body_ref=body_ref(body),
            cancel_note=api.cancel_note(body, audited) if spec.get("cancelRequested") else {},
            cancel_time=api.cancel_time(meta) if spec.get("cancelRequested") else None,
            grace_seconds=api.grace_seconds(spec, default_grace),
            queue_timeout_seconds=spec.get("queueTimeoutSeconds"),
            queued_since=api.parse_time(status.get("queuedAt") or meta.get("creationTimestamp")),
            waiting_for_topic=topic,
            event_ready=topic is not None and api.events_pending(spec, status, topic) > 0,
            queue=api.run_queue(body),
            ttl_seconds_after_finished=spec.get("ttlSecondsAfterFinished"),
            finished_at=api.parse_time(status.get("finishedAt")),
            deleting=bool(meta.get("deletionTimestamp")),
            parent=api.family.parent_of(body),
            waiting_for_children=tuple(str(c) for c in children),
        )

    def condition_list(self) -> list[dict[str, Any]]:
        return [dict(c) for c in self.conditions]


def body_ref(body: dict[str, Any]) -> dict[str, Any]:
    """What an Event needs of the object it is about: apiVersion, kind and its identity."""
    meta = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion", api.API_VERSION),
        "kind": body.get("kind", api.KIND),
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "resourceVersion")},
    }


@dataclasses.dataclass(frozen=True)
class Liveness:
    """What the operator knows of a worker's Lease."""

    expires: dt.datetime
    workflows: frozenset[str]
    # The Lease was deleted. Its holder still counts as alive until ``expires``: a live worker
    # re-creates its Lease at its next renewal, and a deletion (by anyone who may delete Leases)
    # must not hand a running step to a second worker. It no longer serves queued runs.
    deleted: bool = False
    sources: frozenset[tuple[str, str]] = frozenset()  # (workflow id, "module.qualname") it serves
    queue: str = ""  # the runs it claims (spec.queue); "": the default queue


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


def _stop(s: Snapshot, reason: api.StopReason, at: dt.datetime) -> api.Cancellation:
    """The run's recorded cancellation, else the stop the operator notes now."""
    if s.cancellation and s.cancellation.get("reason"):
        return s.cancellation
    note = s.cancel_note if reason == api.StopReason.REQUESTED else None
    return api.stop_record(reason, at, deadline=s.deadline, note=note)


def _finish_cancelled(
    s: Snapshot, stop: api.Cancellation, message: str, at: dt.datetime, *, hard_stop: bool = False
) -> Decision:
    """Cancelled, acknowledged by the operator."""
    patch = api.cancelled(
        s.condition_list(),  # type: ignore[arg-type]
        stop,
        by=OPERATOR,
        message=message,
        at=at,
        generation=s.generation,
        hard_stop=hard_stop,
    )
    return Decision(patch=patch, event=("Warning" if hard_stop else "Normal", api.Phase.CANCELLED, message))


def _cascade(s: Snapshot, why: str, now: dt.datetime) -> Decision:
    """A stop reaches the whole tree: the run's parent stopped or ended, so the run stops too, written
    here so that it holds with no worker running. One status write, as for the operator's other stops
    (no spec write, nothing for the user to see changed in what they wrote): the cancellation, with
    reason ``Requested``, the parent's stop as its message and the operator as ``requestedBy``. A
    held run gets it as the signal (``Cancelling``): its holder lets the step in flight finish within
    its own grace period, runs its cleanup and ends it; a run no worker holds ends ``Cancelled`` at once."""
    stop = api.stop_record(api.StopReason.REQUESTED, now, note={"message": why, "requestedBy": OPERATOR})
    if s.phase == api.Phase.RUNNING:
        return Decision(
            patch=api.cancelling(stop, f"{why}; worker {s.worker} lets the step in flight finish", s.generation),
            guard={"phase": api.Phase.RUNNING, "worker": s.worker},
            event=("Normal", api.Reason.PARENT_STOPPED, f"{why}; signalled worker {s.worker}"),
        )
    if s.phase == api.Phase.CANCELLING:  # already stopping for a reason of its own
        return Decision()
    return _finish_cancelled(s, stop, f"cancelled: {why}", now)


def served_by(s: Snapshot, live_workflows: frozenset[str] | None) -> bool:
    return live_workflows is None or s.workflow in live_workflows


def decide(
    s: Snapshot,
    now: dt.datetime,
    worker: WorkerLookup,
    live_workflows: frozenset[str] | None,
    lease_grace: dt.datetime,
    lease_seconds: float = 15.0,
    blind_until: dt.datetime | None = None,
    conflict: str | None = None,
) -> Decision:
    """The transition to make now. ``live_workflows`` is every workflow a live worker of the run's
    namespace and queue serves (None when unknown); ``lease_grace`` is when a holder without a known
    Lease counts as gone (the operator's start plus one lease duration); ``lease_seconds`` is
    how long a worker that stopped renewing still counts as alive; ``blind_until`` is one lease
    after the operator last had to list the Leases again (a broken watch), before which no known
    holder counts as gone; ``conflict`` names the different code live workers serve the run's
    workflow id with (two modules defining one id in one namespace), None when there is none."""
    phase = s.phase
    if phase in api.TERMINAL_PHASES:
        return Decision()

    if s.parent_stopped and not s.cancel_requested and not s.cancellation:
        return _cascade(s, s.parent_stopped, now)

    if phase is None:  # just created
        if s.cancel_requested:
            stop = _stop(s, api.StopReason.REQUESTED, now)
            return _finish_cancelled(s, stop, "cancelled before it started; no step ran", now)
        served = served_by(s, live_workflows)
        message = "waiting for a worker" if served else _no_worker(s)
        return Decision(
            patch=api.queued(
                s.condition_list(),  # type: ignore[arg-type]
                served=served,
                message=message,
                at=now,
                generation=s.generation,
            ),
            event=("Normal", api.Phase.QUEUED, f"queued for workflow {s.workflow!r}")
            if served
            else ("Warning", api.Reason.NO_WORKER, _no_worker(s)),
        )

    if s.cancel_requested and phase in (api.Phase.QUEUED, api.Phase.WAITING):
        where = "while queued; no step ran" if phase == api.Phase.QUEUED and not s.worker else f"while {phase.lower()}"
        stop = _stop(s, api.StopReason.REQUESTED, now)
        return _finish_cancelled(s, stop, f"cancelled {where}{_said(s.cancel_note)}", now)

    if phase in api.HELD_PHASES:
        return _decide_held(s, now, worker, lease_grace, lease_seconds, blind_until)

    if phase == api.Phase.WAITING:
        if s.waiting_for_children and s.children_done:
            n = len(s.waiting_for_children)
            what = f"the {n} child runs it waits for have ended" if n > 1 else "the child run it waits for has ended"
            return Decision(
                patch=api.woken(api.Reason.CHILDREN_ENDED, f"{what}; waiting for a worker", now, s.generation),
                event=("Normal", api.Reason.CHILDREN_ENDED, f"{what}; re-queued for a worker"),
            )
        if s.event_ready:
            return Decision(
                patch=api.woken(
                    api.Reason.EVENT_ARRIVED,
                    f"event {s.waiting_for_topic!r} arrived; waiting for a worker",
                    now,
                    s.generation,
                ),
                event=(
                    "Normal",
                    api.Reason.EVENT_ARRIVED,
                    f"event {s.waiting_for_topic!r} arrived; re-queued for a worker",
                ),
            )
        if s.wake_at is None and (s.waiting_for_topic is not None or s.waiting_for_children):
            return Decision()  # waits for its event, or its children, with no timeout
        if s.wake_at is None or now >= s.wake_at:
            what = (
                "wait for event " + repr(s.waiting_for_topic) + " timed out" if s.waiting_for_topic else "wait is over"
            )
            return Decision(
                patch=api.woken(api.Reason.WAIT_OVER, f"{what}; waiting for a worker", now, s.generation),
                event=("Normal", api.Reason.WAIT_OVER, f"{what}; re-queued for a worker"),
            )
        return Decision(next_due=s.wake_at)

    if phase == api.Phase.QUEUED:
        if s.queue_timeout_seconds and s.queued_since is not None:
            give_up = api.later(s.queued_since, s.queue_timeout_seconds)  # clamped: never overflows
            if now >= give_up:
                return _finish_cancelled(
                    s,
                    _stop(s, api.StopReason.QUEUE_TIMEOUT, now),
                    f"no worker claimed the run within queueTimeoutSeconds={s.queue_timeout_seconds}",
                    now,
                )
        served = served_by(s, live_workflows)
        current = next((c for c in s.conditions if c.get("type") == api.ConditionType.SCHEDULED), None)
        # Reported, not prevented: a worker refuses to start beside another that serves one of its ids
        # with other code, so this is a worker of an older version, or two started at the same time.
        clash = conflict if served else None
        reason = api.Reason.WORKFLOW_CONFLICT if clash else api.Reason.PENDING if served else api.Reason.NO_WORKER
        if current is None or (current.get("status"), current.get("reason")) != ("False", reason):
            message = clash or ("waiting for a worker" if served else _no_worker(s))
            return Decision(
                patch=api.queue_refreshed(
                    s.condition_list(),  # type: ignore[arg-type]
                    served=served,
                    message=message,
                    at=now,
                    generation=s.generation,
                    conflict=clash is not None,
                ),
                event=None if reason == api.Reason.PENDING else ("Warning", reason, message),
            )
        if s.queue_timeout_seconds and s.queued_since is not None:
            return Decision(next_due=api.later(s.queued_since, s.queue_timeout_seconds))
    return Decision()


def _decide_held(
    s: Snapshot,
    now: dt.datetime,
    worker: WorkerLookup,
    lease_grace: dt.datetime,
    lease_seconds: float,
    blind_until: dt.datetime | None = None,
) -> Decision:
    """A worker holds the run (Running or Cancelling)."""
    holder = worker(s.namespace, s.worker or "")
    expires = holder.expires if holder else lease_grace
    if holder and blind_until is not None and blind_until > expires:
        # The operator lost sight of the Leases (its watch broke: an apiserver or etcd restart) and
        # the workers could not renew meanwhile either: a holder gets one lease from when the
        # operator sees again, to renew, before its runs are called lost and run again elsewhere.
        expires = blind_until
    if now >= expires:
        who = f"worker {s.worker!r} is gone (its lease expired)"
        timed_out = s.deadline is not None and now >= s.deadline
        if s.cancellation or s.cancel_requested or timed_out:
            # The same rule as a worker letting go (``api.pending_stop``): never re-queue a stop.
            stop = _stop(s, api.StopReason.REQUESTED if s.cancel_requested else api.StopReason.RUN_TIMEOUT, now)
            return _finish_cancelled(s, stop, f"{who}; finished the cancellation ({stop['reason']})", now)
        return Decision(
            patch=api.requeued(
                api.Reason.WORKER_LOST,
                f"{who}; the run resumes by replay",
                now,
                deadline=s.deadline,
                generation=s.generation,
            ),
            event=("Warning", api.Reason.WORKER_LOST, f"{who}; re-queued, a worker resumes it by replay"),
        )
    if s.phase == api.Phase.RUNNING and not s.cancellation:
        if s.cancel_requested and s.cancel_time is not None and now < s.cancel_time + HEAD_START:
            # The holder acts on the irrevocable flag itself and usually ends the run at once; a
            # Cancelling write now would only race its ending write (a conflict, a re-read and a
            # second write on a busy apiserver). Record it only if the holder has not ended the run
            # within the head start.
            return Decision(next_due=min(expires, s.cancel_time + HEAD_START))
        if s.cancel_requested:
            return Decision(
                patch=api.cancelling(
                    _stop(s, api.StopReason.REQUESTED, now),
                    f"cancellation requested{_said(s.cancel_note)}; worker {s.worker} lets the step "
                    f"in flight finish (grace period {s.grace_seconds:g} s)",
                    s.generation,
                ),
                guard={"phase": api.Phase.RUNNING, "worker": s.worker},
                event=(
                    "Normal",
                    "Cancelling",
                    f"signalled worker {s.worker}{_by(s.cancel_note)}; grace period {s.grace_seconds:g} s",
                ),
            )
        over = s.deadline and api.later(s.deadline, HEAD_START.total_seconds())  # clamped: never overflows
        if s.deadline is not None and over is not None and s.deadline <= now < over:
            # The same head start for a spent budget: the holder keeps its own timer on the deadline
            # and ends the run at the step boundary; a Cancelling write at the deadline raced almost
            # every such ending (a 409, a re-read and a second write: runs with a 1 s budget beside
            # 100 busy ones were seen ended 74-558 ms after their finishedAt; with it, 11-24 ms).
            return Decision(next_due=min(expires, over))
        if s.deadline is not None and now >= s.deadline:
            return Decision(
                patch=api.cancelling(
                    _stop(s, api.StopReason.RUN_TIMEOUT, now),
                    f"runTimeoutSeconds={s.run_timeout_seconds} exhausted; worker {s.worker} lets "
                    f"the step in flight finish (grace period {s.grace_seconds:g} s)",
                    s.generation,
                ),
                guard={"phase": api.Phase.RUNNING, "worker": s.worker},
                event=(
                    "Warning",
                    api.StopReason.RUN_TIMEOUT,
                    f"run budget of {s.run_timeout_seconds}s exhausted; signalled worker {s.worker}",
                ),
            )
    due = [expires]
    if s.phase == api.Phase.RUNNING and s.deadline is not None and not s.cancellation:
        due.append(s.deadline)
    requested = api.parse_time((s.cancellation or {}).get("requestedAt"))
    if s.phase == api.Phase.CANCELLING and requested is not None:
        # Cancelling never outlasts the grace period plus one lease, even under a live worker
        # that cannot end the run (a step that ignores interruption, a write that keeps failing).
        bound = api.later(requested, s.grace_seconds + lease_seconds)
        if now >= bound:
            return _finish_cancelled(
                s,
                _stop(s, api.StopReason.REQUESTED, now),
                f"worker {s.worker} did not end the run within the grace period ({s.grace_seconds:g} s) plus one "
                f"lease ({lease_seconds:g} s); ended by the operator",
                now,
                hard_stop=True,
            )  # on its resourceVersion: the holder is not writing
        due.append(bound)
    return Decision(next_due=min(due))


def expires_at(s: Snapshot, default_ttl: int | None) -> dt.datetime | None:
    """When a finished run is deleted (retention, like a Job's ``ttlSecondsAfterFinished``): its
    ``status.finishedAt`` plus its ``spec.ttlSecondsAfterFinished``, or plus ``default_ttl`` (the
    operator's ``KUBESTEP_RUN_TTL_SECONDS``) when its spec sets none. None while the run is unfinished,
    when no TTL applies (kept until someone deletes it), when it is being deleted already, and when it
    records no ``finishedAt`` (every terminal transition writes one: a run without it is kept rather
    than deleted on a guess). ``finishedAt`` is its writer's clock, so a writer whose clock runs ahead
    delays the deletion by as much, never hastens it. Pure."""
    if s.phase not in api.TERMINAL_PHASES or s.finished_at is None or s.deleting:
        return None
    ttl = s.ttl_seconds_after_finished if s.ttl_seconds_after_finished is not None else default_ttl
    if ttl is None:
        return None
    return api.later(s.finished_at, max(0, ttl))  # clamped: never overflows


def due_for_deletion(s: Snapshot, now: dt.datetime, default_ttl: int | None) -> bool:
    """Whether the finished run ``s`` is to be deleted ``now`` (``expires_at``). Pure."""
    at = expires_at(s, default_ttl)
    return at is not None and now >= at


def cancel_requested(s: Snapshot) -> tuple[str, str, str]:
    """The Event that says a user asked to cancel ``s``: posted once per run, whatever ends it (a
    holder that ends the run within its head start writes no Cancelling, and was silent before)."""
    return ("Normal", "CancelRequested", f"cancellation requested{_by(s.cancel_note)}{_said(s.cancel_note)}")


def _cancellation(record: Any) -> api.Cancellation | None:
    return api.Cancellation(**record) if record else None  # type: ignore[typeddict-item]


def _said(note: api.Cancellation) -> str:
    return f" ({note['message']})" if note.get("message") else ""


def _by(note: api.Cancellation) -> str:
    who = note.get("requestedByUser") or note.get("requestedBy")
    return f" (asked by {who})" if who else ""


class Urgency(enum.IntEnum):
    """How soon a decided write must be made; lower goes first (``writing.Backlog``)."""

    STOP = 0  # a cancel or an exhausted budget: Cancelling, Cancelled
    PROGRESS = 1  # a run moves on: wait over, worker lost
    ADMIT = 2  # a new run is queued, or its Scheduled condition refreshed
    EXPIRE = 3  # a finished run past its TTL is deleted: housekeeping, after every write that moves a run


def urgency(s: Snapshot, d: Decision) -> Urgency:
    """Stopping runaway work comes first, even behind thousands of admissions."""
    if (d.patch or {}).get("phase") in (api.Phase.CANCELLING, api.Phase.CANCELLED):
        return Urgency.STOP
    if s.phase is None or s.phase == api.Phase.QUEUED:
        return Urgency.ADMIT
    return Urgency.PROGRESS


def _no_worker(s: Snapshot) -> str:
    where = f"in namespace {s.namespace}" + (f" on queue {s.queue!r}" if s.queue else "")
    return f"no live worker serves workflow {s.workflow!r} {where}; the run stays queued"
