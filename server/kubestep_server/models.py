"""The API's JSON: request bodies (pydantic, strict: an unknown field is a 400, so a typo such as
``"reson"`` is not silently dropped) and the answers' shapes (snake_case, as the SDK's models).

The request models check types and ranges the server itself relies on; what a run may hold (names,
labels, lengths, CEL rules) the apiserver checks, and its refusal comes back as a 422.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kubestep import Execution, ExecutionChange, RunEvent, StepRecord

from .errors import bad_request


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CancelBody(_Body):
    """``POST /api/v1/executions/{id}/cancel``; every field optional, and so is the body itself."""

    #: Why (``status.cancellation.message``); the first reason given is kept.
    reason: str | None = Field(None, max_length=1024)
    #: Shortens the run's grace period for the step in flight (0: stop it now); never lengthens it.
    grace_period_seconds: int | None = Field(None, ge=0, le=86400)


class RunBody(_Body):
    """``POST /api/v1/workflows/{workflow}/run``."""

    payload: Any = None
    run_timeout_seconds: int | None = None
    queue_timeout_seconds: int | None = None
    cancel_grace_period_seconds: int | None = None
    queue: str | None = None
    #: ``spec.ttlSecondsAfterFinished``: delete the run this long after it finishes (default: the installation's).
    ttl_seconds_after_finished: int | None = None
    #: The run's name; default, the workflow's followed by a random suffix.
    name: str | None = None
    labels: dict[str, str] | None = None


class EventBody(_Body):
    """``POST /api/v1/executions/{id}/events``."""

    topic: str = Field(min_length=1)
    data: Any = None
    #: Makes a retried send safe: the same name twice is refused (422).
    name: str | None = None


M = TypeVar("M", bound=_Body)


def parse_body(model: type[M], raw: bytes) -> M:
    """A request body as ``model``: ``Problem`` 400 if it is not JSON, not an object, or not what
    ``model`` takes. An empty body is ``{}`` (the seed's cancel sends none)."""
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as e:  # RecursionError: nesting deeper than the parser goes
            raise bad_request(f"the request body is not JSON: {str(e)[:200]}") from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors())
        raise bad_request(f"the request body is not valid: {problems}") from None


def execution_json(execution: Execution) -> dict[str, Any]:
    """One run: the SDK's ``Execution`` (snake_case), with its ``resource_version``, whether it
    ``finished``, and its ``cancellation`` (also one requested and not yet recorded in its status:
    who asked, when)."""
    out = execution.model_dump(mode="json")
    cancellation = execution.cancellation
    out["resource_version"] = resource_version(execution)  # also each stream message's ``id:``
    out["finished"] = execution.finished
    out["cancellation"] = None if cancellation is None else cancellation.model_dump(mode="json")
    # Its place in its tree (a child run's parent, root and depth; None, None, 0 for a root).
    out["parent"], out["root"], out["depth"] = execution.parent, execution.root, execution.depth
    return out


def change_json(change: ExecutionChange) -> dict[str, Any]:
    """One change of a namespace's runs (``GET /api/v1/executions?watch=true``)."""
    return {"type": change.kind, "listed": change.listed, "execution": execution_json(change.execution)}


def step_json(step: StepRecord) -> dict[str, Any]:
    return step.model_dump(mode="json")


def event_json(event: RunEvent) -> dict[str, Any]:
    return event.model_dump(mode="json")


def time_json(at: dt.datetime | None) -> str | None:
    return None if at is None else at.isoformat().replace("+00:00", "Z")


def resource_version(execution: Execution) -> str:
    """The run's ``metadata.resourceVersion``: each stream message's ``id:``."""
    return str((execution.raw.get("metadata") or {}).get("resourceVersion") or "")
