"""Time as the status carries it: RFC 3339 in UTC with microseconds, and arithmetic that never raises.

Every duration here comes from an object a tenant or a worker wrote (``runTimeoutSeconds``, a Lease's
``leaseDurationSeconds``, a ``managedFields`` time): the CRD bounds what it can (a year at most), but an
object stored before those bounds, a Lease, or a client-chosen ``managedFields`` entry reaches the
operator unchecked. ``datetime + timedelta`` raises ``OverflowError`` past year 9999 and ``timedelta``
itself past ~2.7 million years, and one such exception in the operator once stopped its informer for
every namespace. So every sum goes through ``later``, which clamps instead.
"""

from __future__ import annotations

import datetime as dt
import math

# No duration is worth more than this in any computation (the CRD's own maximum is 365 days).
MAX_SECONDS = 10 * 366 * 86400.0
# The latest time ever computed: far enough never to be reached, early enough to be formatted and
# compared safely (``fmt_time`` of year 9999 plus anything overflows).
END_OF_TIME = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)
START_OF_TIME = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def fmt_time(t: dt.datetime) -> str:
    """RFC 3339 with microseconds; the CRD's date-time format accepts fractions."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(s: str | None) -> dt.datetime | None:
    """An RFC 3339 time as an aware UTC datetime (a time without a zone is taken as UTC: comparing a
    naive with an aware datetime raises). Raises ValueError on a malformed string."""
    if not s:
        return None
    t = dt.datetime.fromisoformat(str(s).replace("Z", "+00:00"))
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t


def duration(value: object, default: float | None = None) -> float | None:
    """A duration read from an object, as a finite number of seconds within ``[0, MAX_SECONDS]``;
    ``default`` when absent or not a number."""
    if value is None or isinstance(value, bool):
        return default
    try:
        s = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return default
    if math.isnan(s):
        return default
    return min(max(s, 0.0), MAX_SECONDS)


def later(t: dt.datetime, by: float) -> dt.datetime:
    """``t`` plus ``by`` seconds, clamped to ``[START_OF_TIME, END_OF_TIME]``: never raises."""
    s = 0.0 if math.isnan(by) else min(max(by, -MAX_SECONDS), MAX_SECONDS)
    try:
        result = t + dt.timedelta(seconds=s)
    except OverflowError:  # t itself near the end (or start) of the calendar
        return END_OF_TIME if s > 0 else START_OF_TIME
    return min(max(result, START_OF_TIME), END_OF_TIME)


def not_after(t: dt.datetime | None, bound: dt.datetime) -> dt.datetime | None:
    """A time an object claims for something that already happened, never later than ``bound``
    (now): a Lease renewed "in 9999", or a ``managedFields`` entry dated there, counts as now."""
    return None if t is None else min(t, bound)
