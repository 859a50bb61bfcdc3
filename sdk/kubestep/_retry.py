"""Step retries: the policy (pure, no clock) and the names of a retried step's records.

A retried step is a series of attempts, each its own step record: attempt 1 under the step's own key
(so adding a policy to a step changes nothing already recorded), attempt ``n`` under ``key~attempt-n``.
A failed attempt that the policy retries records when the next one is due (``retryAt``); the backoff
between them is a durable wait (``key~backoff-n``): the worker is freed, the run's budget does not run,
and a cancel or a run timeout meanwhile ends the run at once, with no further attempt (the operator ends
a Waiting run itself). A resumed run replays the attempts recorded and continues the schedule where it
was, never from the start. The loop is the context's (``Step.run``), so the worker and
``kubestep.testing`` share it; the runtime only records each attempt and says whether it was retried.

The schedule is Temporal's (initial interval, backoff coefficient, maximum interval, maximum attempts,
non-retryable error types), with Polos's ``max_retries`` / ``base_delay`` / ``max_delay`` as a
shorthand. Unlike Temporal's default, the number of attempts is always finite: every backoff is a wait,
and a wait starts the run's budget afresh, so an unbounded schedule would be a run no timeout stops.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from ._errors import InvalidInputError, WorkflowDefinitionError

# A run's attempts at one step, at most: each backoff is a wait, which restarts the budget.
MAX_ATTEMPTS = 100
# The longest backoff: a wait of more than a week is a schedule, not a retry.
MAX_INTERVAL_SECONDS = 7 * 24 * 3600.0

ATTEMPT_SEP = "~attempt-"
BACKOFF_SEP = "~backoff-"

# Errors no retry can cure: the step's output is not JSON, or the workflow is ill-defined.
ALWAYS_FINAL: tuple[type[BaseException], ...] = (InvalidInputError, WorkflowDefinitionError)


def attempt_key(key: str, attempt: int) -> str:
    """The record key of ``attempt`` (1-based) of step ``key``."""
    return key if attempt == 1 else f"{key}{ATTEMPT_SEP}{attempt}"


def backoff_key(key: str, attempt: int) -> str:
    """The key of the wait after ``attempt`` of step ``key`` failed."""
    return f"{key}{BACKOFF_SEP}{attempt}"


class RetryScheduled(BaseException):
    """Raised by a runtime's ``run_step`` when the attempt failed and is retried (now, or as recorded
    on replay): the next attempt is due in ``seconds``. A BaseException: it never leaves ``Step.run``."""

    def __init__(self, seconds: float, cause: BaseException | None = None) -> None:
        super().__init__(seconds)
        self.seconds = max(0.0, seconds)
        self.cause = cause


# What a runtime asks before it records a failed attempt: the backoff before the next one, or None
# (the failure is final).
Decide = Callable[[BaseException], "float | None"]


def _number(name: str, value: float, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}, not {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How a failed step is tried again: ``max_attempts`` in all (the first included), the n-th backoff
    ``initial_interval * backoff_coefficient ** (n - 1)`` seconds, at most ``max_interval``. An error
    that is an instance of one of ``non_retryable`` (exception classes, or class names as recorded)
    ends the step at once. A step's ``timeout`` applies to each attempt, and an attempt that times out
    is retried like one that raised (``StepTimeoutError``). Nothing is retried once the run is told
    to stop: a cleanup step's failure is final."""

    max_attempts: int = 3
    initial_interval: float = 1.0
    backoff_coefficient: float = 2.0
    max_interval: float = 100.0
    non_retryable: tuple[type[BaseException] | str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TypeError(f"max_attempts must be an int, not {type(self.max_attempts).__name__}")
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise ValueError(
                f"max_attempts must be between 1 and {MAX_ATTEMPTS}, not {self.max_attempts} (every backoff "
                "is a wait, which restarts the run's budget: an unbounded schedule no timeout would stop)"
            )
        _number("initial_interval", self.initial_interval, 0, MAX_INTERVAL_SECONDS)
        _number("backoff_coefficient", self.backoff_coefficient, 1, 100)
        _number("max_interval", self.max_interval, 0, MAX_INTERVAL_SECONDS)
        if self.max_interval < self.initial_interval:
            raise ValueError(
                f"max_interval ({self.max_interval:g}) must not be less than initial_interval "
                f"({self.initial_interval:g})"
            )
        for t in self.non_retryable:
            if not (isinstance(t, str) or (isinstance(t, type) and issubclass(t, BaseException))):
                raise TypeError(f"non_retryable holds exception classes or their names, not {t!r}")

    @classmethod
    def polos(cls, max_retries: int, base_delay: float = 1.0, max_delay: float = 10.0) -> RetryPolicy:
        """Polos's keywords: ``max_retries`` retries after the first attempt, the delay doubling from
        ``base_delay`` up to ``max_delay``."""
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int of 0 or more, not {max_retries!r}")
        return cls(max_retries + 1, base_delay, 2.0, max_delay)

    def delay(self, attempt: int) -> float:
        """The backoff after ``attempt`` (1-based) failed."""
        exponent = min(attempt - 1, 1024)  # past it the cap applies anyway; no float overflow
        try:
            raw = self.initial_interval * self.backoff_coefficient**exponent
        except OverflowError:
            raw = math.inf
        return min(self.max_interval, raw)

    def final(self, exc: BaseException) -> bool:
        """True if ``exc`` is not worth another attempt, whatever the count."""
        if not isinstance(exc, Exception) or isinstance(exc, ALWAYS_FINAL):
            return True
        names = {type(exc).__name__, f"{type(exc).__module__}.{type(exc).__qualname__}"}
        return any(isinstance(exc, t) if isinstance(t, type) else t in names for t in self.non_retryable)

    def next_delay(self, exc: BaseException, attempt: int) -> float | None:
        """The backoff before the attempt after ``attempt``, or None if ``exc`` ends the step."""
        if attempt >= self.max_attempts or self.final(exc):
            return None
        return self.delay(attempt)


def resolve(
    retry: RetryPolicy | None,
    max_retries: int | None,
    base_delay: float | None,
    max_delay: float | None,
) -> RetryPolicy | None:
    """The policy of ``ctx.step.run``'s keywords: ``retry=`` or Polos's three, not both."""
    polos = {k: v for k, v in (("base_delay", base_delay), ("max_delay", max_delay)) if v is not None}
    if retry is not None:
        if max_retries is not None or polos:
            raise TypeError("pass retry=RetryPolicy(...) or max_retries/base_delay/max_delay, not both")
        if not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
        return retry
    if max_retries is None:
        if polos:
            raise TypeError("base_delay and max_delay need max_retries")
        return None
    return RetryPolicy.polos(max_retries, **polos)
