"""Prometheus metrics of the operator, served on ``--metrics-port``.

kopf has no metrics of its own, so these count what the operator decides:
every transition it writes (by phase and reason), writes that failed and
were retried, and the size of the one scheduler that holds every deadline
and wake-up.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

TRANSITIONS = Counter(
    "kubestep_operator_transitions_total", "Status transitions the operator wrote, by phase and reason.",
    ["phase", "reason"],
)
LOST_RACES = Counter(
    "kubestep_operator_lost_races_total",
    "Operator writes refused because the run changed first (it decides again on the next event).",
)
WRITE_ERRORS = Counter(
    "kubestep_operator_write_errors_total", "Operator status writes that failed and were rescheduled.",
)
SCHEDULED = Gauge("kubestep_operator_scheduled", "Runs and leases the scheduler will look at again.")
UNFINISHED = Gauge("kubestep_operator_unfinished_runs", "Unfinished runs in the operator's index.")
