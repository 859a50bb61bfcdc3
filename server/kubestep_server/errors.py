"""HTTP errors with a JSON body, and the SDK's errors mapped to them (pure: no I/O).

Every error the API answers has the body ``{"error": "<what went wrong, for a person>", "reason":
"<one word, for a program>"}`` (and sometimes more fields). The reasons are the apiserver's own
``Status`` reasons where the apiserver decided (``Forbidden``, ``NotFound``, ``Invalid`` …), so a
refusal through the server reads as the same refusal through ``kubectl``.
"""

from __future__ import annotations

from typing import Any

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

#: What a 401 answer says about how to authenticate (RFC 6750).
WWW_AUTHENTICATE = 'Bearer realm="kubestep"'


class Problem(Exception):
    """An HTTP error answer: ``status``, ``reason`` (one word) and ``message`` (for a person);
    ``extra`` adds fields to the JSON body, ``headers`` to the response."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})
        if status == 401:
            self.headers.setdefault("WWW-Authenticate", WWW_AUTHENTICATE)

    def body(self) -> dict[str, Any]:
        return {**self.extra, "error": self.message, "reason": self.reason}


def unauthorized(message: str) -> Problem:
    return Problem(401, "Unauthorized", message)


def bad_request(message: str) -> Problem:
    return Problem(400, "BadRequest", message)


#: The apiserver's answers that pass through with their own status: the caller's request was
#: refused for what it is, and says so the same way to kubectl.
_PASSED: dict[type[ApiError], tuple[int, str]] = {
    ForbiddenError: (403, "Forbidden"),
    NotFoundError: (404, "NotFound"),
    ConflictError: (409, "Conflict"),
    InvalidError: (422, "Invalid"),
    TooLargeError: (413, "RequestEntityTooLarge"),
}
#: Other statuses of the apiserver that concern the caller's request, not the server.
_PASSED_STATUS = {400: "BadRequest", 410: "Expired", 429: "TooManyRequests"}


def problem_for(error: Exception) -> Problem | None:
    """The HTTP answer for an error the SDK raised on the caller's behalf; None if it is not one
    of the SDK's (a bug of the server's: a 500, logged)."""
    if isinstance(error, Problem):
        return error
    if isinstance(error, ExecutionNotFoundError):
        return Problem(404, "NotFound", str(error))
    if isinstance(error, InvalidInputError):
        return bad_request(str(error))
    if isinstance(error, TransportError):
        # Not the caller's fault, and nothing to show them of it: the server could not reach its apiserver.
        return Problem(502, "BadGateway", "the Kubernetes API server could not be reached; try again")
    if isinstance(error, ApiError):
        return _api_problem(error)
    if isinstance(error, StepStoreUnreachableError):
        # This server was given no DSN (the chart gives one with stepStore postgres): the run is fine.
        return Problem(
            501,
            "NotImplemented",
            f"{error}; this server does not read the Postgres step store: "
            "`kubestep steps` with KUBESTEP_POSTGRES_DSN set shows the whole history",
        )
    if isinstance(error, JournalError):
        # A chunk missing or replaced (digest): the run's data, not this server, is at fault; say which.
        return Problem(500, "JournalUnreadable", str(error))
    return None


def _api_problem(error: ApiError) -> Problem:
    status_reason = _status_reason(error.body)
    if error.status_code == 401:
        # The apiserver's message is one word; say what it means. Never echo the token.
        return unauthorized(
            "the Kubernetes API server did not accept the bearer token (expired, revoked, or not a token of this cluster)"
        )
    for cls, (status, reason) in _PASSED.items():
        if isinstance(error, cls):
            return Problem(status, status_reason or reason, error.message)
    if error.status_code in _PASSED_STATUS:
        headers = {"Retry-After": "1"} if error.status_code == 429 else None
        return Problem(
            error.status_code, status_reason or _PASSED_STATUS[error.status_code], error.message, headers=headers
        )
    # A 5xx, or a status no request of ours should meet: the apiserver failed, not the caller.
    return Problem(502, "BadGateway", f"the Kubernetes API server answered {error.status_code}: {error.message}")


def _status_reason(body: Any) -> str | None:
    """The ``reason`` of the apiserver's ``Status`` answer, if it sent one (a proxy in between may not)."""
    if isinstance(body, dict) and body.get("kind") == "Status" and isinstance(body.get("reason"), str):
        reason: str = body["reason"]
        return reason if reason.isalnum() and len(reason) <= 64 else None
    return None
