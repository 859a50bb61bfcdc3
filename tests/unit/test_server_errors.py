"""How ``kubestep server`` answers what the apiserver (through the SDK) said, without a cluster: the
apiserver's refusals keep their status and message, so a refusal through the server reads as the
same refusal through kubectl; the server's own troubles are its own statuses."""

from __future__ import annotations

from typing import Any

import pytest

from kubestep import (
    ApiError,
    ConflictError,
    ExecutionNotFoundError,
    ForbiddenError,
    InvalidError,
    InvalidInputError,
    JournalError,
    NotFoundError,
    StepStoreUnreachableError,
    TooLargeError,
    TransportError,
)
from kubestep_server.errors import Problem, problem_for


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


FORBIDDEN = (
    'workflowexecutions.kubestep.io "r" is forbidden: User "system:serviceaccount:a:reader" cannot patch '
    'resource "workflowexecutions" in API group "kubestep.io" in the namespace "a"'
)


@pytest.mark.parametrize(
    ("error", "status", "reason", "message"),
    [
        (ForbiddenError(403, FORBIDDEN, _status(403, "Forbidden", FORBIDDEN)), 403, "Forbidden", FORBIDDEN),
        (NotFoundError(404, "not found", None), 404, "NotFound", "not found"),
        (ExecutionNotFoundError("no execution 'x' in namespace a"), 404, "NotFound", "no execution 'x' in namespace a"),
        (ConflictError(409, "changed", None), 409, "Conflict", "changed"),
        (InvalidError(422, "spec.queue: Invalid value", _status(422, "Invalid", "x")), 422, "Invalid", None),
        (TooLargeError(413, "too large", None), 413, "RequestEntityTooLarge", None),
        (ApiError(400, "unable to parse requirement", _status(400, "BadRequest", "x")), 400, "BadRequest", None),
        (ApiError(410, "continue token expired", _status(410, "Expired", "x")), 410, "Expired", None),
        (ApiError(429, "too many requests", None), 429, "TooManyRequests", None),
        (InvalidInputError("the input is not JSON"), 400, "BadRequest", "the input is not JSON"),
        (TransportError("GET /apis/...: ConnectionRefused"), 502, "BadGateway", None),
        (ApiError(500, "etcdserver: leader changed", None), 502, "BadGateway", None),
        (ApiError(503, "unavailable", None), 502, "BadGateway", None),
    ],
)
def test_each_error_has_its_answer(error: Exception, status: int, reason: str, message: str | None) -> None:
    problem = problem_for(error)
    assert problem is not None
    assert (problem.status, problem.reason) == (status, reason)
    if message is not None:
        assert problem.message == message
    assert problem.body() == {"error": problem.message, "reason": reason}


def test_a_401_from_the_apiserver_is_a_401_asking_for_a_bearer_token() -> None:
    problem = problem_for(ApiError(401, "Unauthorized", _status(401, "Unauthorized", "Unauthorized")))
    assert problem is not None and (problem.status, problem.reason) == (401, "Unauthorized")
    assert problem.headers["WWW-Authenticate"] == 'Bearer realm="kubestep"'


def test_a_429_says_when_to_retry() -> None:
    problem = problem_for(ApiError(429, "slow down", None))
    assert problem is not None and problem.headers == {"Retry-After": "1"}


def test_a_transport_error_is_not_shown_to_the_caller() -> None:
    problem = problem_for(TransportError("GET https://10.0.0.1:6443/apis/...: ClientConnectorError(secret detail)"))
    assert problem is not None and "10.0.0.1" not in problem.message and "secret" not in problem.message


def test_the_apiservers_reason_word_is_kept_and_a_strange_one_is_not() -> None:
    assert problem_for(ForbiddenError(403, "x", _status(403, "Forbidden", "x"))).reason == "Forbidden"  # type: ignore[union-attr]
    weird = ForbiddenError(403, "x", _status(403, "<script>", "x"))
    assert problem_for(weird).reason == "Forbidden"  # type: ignore[union-attr]


def test_what_is_not_the_sdks_is_left_to_the_500_handler() -> None:
    assert problem_for(KeyError("x")) is None
    mine = Problem(409, "AlreadyFinished", "done", extra={"status": "Completed"})
    assert problem_for(mine) is mine and mine.body() == {
        "status": "Completed",
        "error": "done",
        "reason": "AlreadyFinished",
    }


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"names": ["a"], "filter": {}},
        {"names": []},
        {"names": ["../etc"]},
        {"names": ["a"], "reson": "typo"},
        {"filter": {"phase": "Running", "labelSelector": "x"}},
        {"names": ["a"], "grace_period_seconds": -1},
    ],
)
def test_a_bulk_cancel_names_runs_or_a_filter_never_both_nor_neither(body: dict[str, object]) -> None:
    import json

    from kubestep_server.bulk import BulkCancelBody
    from kubestep_server.errors import Problem
    from kubestep_server.models import parse_body

    with pytest.raises(Problem) as refused:
        parse_body(BulkCancelBody, json.dumps(body).encode())
    assert refused.value.status == 400


def test_a_bulk_cancel_keeps_each_name_once_in_order() -> None:
    from kubestep_server.bulk import BulkCancelBody
    from kubestep_server.models import parse_body

    body = parse_body(BulkCancelBody, b'{"names": ["b", "a", "b"], "reason": "why"}')
    assert body.names == ["b", "a"] and body.reason == "why"


def test_a_journal_the_server_cannot_read_says_why_instead_of_a_bare_500() -> None:
    """The server has no DSN of the Postgres step store: a run whose archive is there gets a 501 that
    names the way to read it; a replaced or missing chunk a 500 that names the chunk (not a server bug)."""
    postgres = problem_for(StepStoreUnreachableError("journal chunk postgres:7 is in the Postgres step store"))
    assert postgres is not None and postgres.status == 501 and "KUBESTEP_POSTGRES_DSN" in postgres.message
    broken = problem_for(JournalError("journal ConfigMap r-steps-x is missing"))
    assert broken is not None and broken.status == 500 and broken.reason == "JournalUnreadable"
    assert "r-steps-x" in broken.message
