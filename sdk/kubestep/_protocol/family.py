"""Child runs: how a child is named and linked to its parent, and what a parent's stop does to it.

A child is a WorkflowExecution in its parent's namespace with a controller ownerReference to the parent
(deleted with it by the garbage collector) and labels naming its parent, its root and its depth, for
``kubectl get wfx -l kubestep.io/root=NAME``. The ownerReference (name *and* uid) is the link the operator
trusts; the labels are for people and selectors. A child's name is derived from its parent's uid and
the invoking step's key, so a replayed ``invoke`` (or one whose record was lost in a crash after the
create) finds the child it made instead of starting a second one.

What a child inherits, and why: the parent's ``runTimeoutSeconds`` unless the invoke gives its own (a
parent waiting on a child does not spend its budget, so a child without one would be work no budget
bounds), the parent's grace period (the cascade stops it as the parent would stop), and its queue.

The cascade (written by the operator, so it holds with no worker running): a child whose parent is
told to stop (cancel requested, Cancelling) or has ended in any phase is cancelled, with a message that
names the parent and carries the parent's own, so a grandchild's says which ancestor stopped and why.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final

from .names import API_VERSION, KIND, LABEL_WORKFLOW
from .vocabulary import TERMINAL_PHASES, Phase, StopReason

LABEL_PARENT: Final = "kubestep.io/parent"
LABEL_ROOT: Final = "kubestep.io/root"
LABEL_DEPTH: Final = "kubestep.io/depth"

MAX_DEPTH: Final = 8  # a root's children are depth 1
MAX_CHILDREN: Final = 1000  # children one run may start, in all
CANCEL_REASON_MAX: Final = 1024  # a stop's message at most, as spec.cancelReason's maxLength


def label_value(name: str) -> str:
    """A name as a label value (63 characters at most): itself if it fits, else a prefix and a hash."""
    if len(name) <= 63:
        return name
    return f"{name[:52].rstrip('-.')}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def child_name(parent: str, parent_uid: str, key: str) -> str:
    """The child's name: the parent's as a readable prefix, and a hash of the parent's uid and the
    step key (unique per parent and key, stable across replays). 51 characters at most."""
    digest = hashlib.sha256(f"{parent_uid}\0{key}".encode()).hexdigest()[:10]
    prefix = re.sub(r"[^a-z0-9-]", "-", parent[:40].lower()).strip("-") or "run"
    return f"{prefix}-{digest}"


def parent_of(body: dict[str, Any]) -> tuple[str, str] | None:
    """(name, uid) of the run's parent: its controller ownerReference to a WorkflowExecution."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("kind") == KIND and ref.get("controller") is True:
            if str(ref.get("apiVersion", "")).split("/")[0] == API_VERSION.split("/")[0]:
                return str(ref.get("name", "")), str(ref.get("uid", ""))
    return None


def depth_of(body: dict[str, Any]) -> int:
    """The run's depth in its tree (0: a root), from its label; a malformed label counts as 0."""
    raw = ((body.get("metadata") or {}).get("labels") or {}).get(LABEL_DEPTH, "0")
    return int(raw) if isinstance(raw, str) and raw.isdigit() and len(raw) < 4 else 0


def root_of(body: dict[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return str((meta.get("labels") or {}).get(LABEL_ROOT) or label_value(str(meta.get("name", ""))))


def child_body(
    parent: dict[str, Any],
    key: str,
    workflow: str,
    payload: Any,
    *,
    run_timeout_seconds: int | None = None,
    queue: str | None = None,
) -> dict[str, Any]:
    """The WorkflowExecution a parent's ``invoke`` creates (see the module's note on inheritance)."""
    meta, spec = parent["metadata"], parent.get("spec") or {}
    labels = {
        LABEL_PARENT: label_value(meta["name"]),
        LABEL_ROOT: root_of(parent),
        LABEL_DEPTH: str(depth_of(parent) + 1),
    }
    if len(workflow) <= 63:
        labels[LABEL_WORKFLOW] = workflow
    child_spec: dict[str, Any] = {"workflow": workflow, "input": payload}
    timeout = run_timeout_seconds if run_timeout_seconds is not None else spec.get("runTimeoutSeconds")
    if timeout is not None:
        child_spec["runTimeoutSeconds"] = timeout
    if spec.get("cancelGracePeriodSeconds") is not None:
        child_spec["cancelGracePeriodSeconds"] = spec["cancelGracePeriodSeconds"]
    q = queue if queue is not None else spec.get("queue")
    if q:
        child_spec["queue"] = q
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": child_name(meta["name"], meta["uid"], key),
            "namespace": meta["namespace"],
            "labels": labels,
            "ownerReferences": [
                {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta["uid"], "controller": True}
            ],
        },
        "spec": child_spec,
    }


def outcome(body: dict[str, Any]) -> dict[str, Any] | None:
    """What a parent sees of an ended child (recorded as its wait's output), or None while it runs."""
    status = body.get("status") or {}
    phase = status.get("phase")
    if phase not in TERMINAL_PHASES:
        return None
    out: dict[str, Any] = {"id": body["metadata"]["name"], "phase": phase, "reason": status.get("reason")}
    if phase == Phase.COMPLETED:
        out["result"] = status.get("result")
    elif phase == Phase.FAILED:
        out["error"] = status.get("error")
    else:
        cancellation = status.get("cancellation") or {}
        out["stop"] = {k: cancellation[k] for k in ("reason", "message", "requestedBy") if k in cancellation}
    return out


def parent_stop(parent: dict[str, Any]) -> str | None:
    """Why a parent's children must stop now (the message of the cancellation the operator writes on
    each), or None while the parent goes on."""
    meta, spec, status = parent.get("metadata") or {}, parent.get("spec") or {}, parent.get("status") or {}
    phase = status.get("phase")
    cancellation = status.get("cancellation") or {}
    name = meta.get("name", "")
    if spec.get("cancelRequested") or cancellation.get("reason"):
        why = str(cancellation.get("reason") or StopReason.REQUESTED)
        said = spec.get("cancelReason") or cancellation.get("message")
        text = f"parent {name} stopped ({why}{': ' + str(said) if said else ''})"
    elif phase in TERMINAL_PHASES:
        text = f"parent {name} ended ({phase})"
    else:
        return None
    return text[:CANCEL_REASON_MAX]
