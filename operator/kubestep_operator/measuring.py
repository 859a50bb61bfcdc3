"""Prometheus metrics of the operator, served on ``--metrics-port``.

kopf has no metrics of its own, so these count what the operator decides:
every transition it writes (by phase and reason), writes that lost a race,
writes that failed and were retried, objects it could not handle, the size of the one scheduler that holds every deadline and
wake-up, the write backlog by urgency, the StepBatches it collected, and the finished runs it deleted at the end
of their TTL (retention). Write throughput is
``rate(kubestep_operator_write_seconds_count[1m])``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TRANSITIONS = Counter(
    "kubestep_operator_transitions_total",
    "Status transitions the operator wrote, by phase and reason.",
    ["phase", "reason"],
)
LOST_RACES = Counter(
    "kubestep_operator_lost_races_total",
    "Operator writes refused because the run changed first, or is gone: a 409, a failed JSON patch test, a 404 "
    "(it decides again on the next event).",
)
WRITE_ERRORS = Counter(
    "kubestep_operator_write_errors_total",
    "Operator status writes that failed on the way (network, apiserver errors) and were rescheduled; a write "
    'refused as invalid counts in kubestep_operator_object_errors_total{stage="write"}.',
)
SCHEDULED = Gauge("kubestep_operator_scheduled", "Runs and leases the scheduler will look at again.")
UNFINISHED = Gauge("kubestep_operator_unfinished_runs", "Unfinished runs in the operator's index.")
BACKLOG = Gauge(
    "kubestep_operator_backlog",
    "Runs with a decided status write waiting for a writer, by urgency.",
    ["urgency"],
)
WRITES_IN_FLIGHT = Gauge("kubestep_operator_writes_in_flight", "Status writes being made now.")
WRITE_SECONDS = Histogram(
    "kubestep_operator_write_seconds",
    "Latency of the operator's successful status writes, by urgency.",
    ["urgency"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
EVENTS_QUEUED = Gauge("kubestep_operator_events_queued", "Events waiting to be posted.")
EVENTS_DROPPED = Counter(
    "kubestep_operator_events_dropped_total",
    "Events not posted because the event queue was full.",
)
LEADER = Gauge("kubestep_operator_leader", "1 while this replica holds the leader Lease (or runs without election).")
OBJECT_ERRORS = Counter(
    "kubestep_operator_object_errors_total",
    "Objects the operator could not handle (logged with their names; every other object goes on), by what it was "
    "doing: read, decide, write (a status write the apiserver refused as invalid), event.",
    ["stage"],
)
BATCHES_COLLECTED = Counter(
    "kubestep_operator_batches_collected_total",
    "StepBatches the operator deleted because no run needs them any more (collecting.py).",
)
RUNS_DELETED = Counter(
    "kubestep_operator_runs_deleted_total",
    "Finished runs the operator deleted at the end of their TTL (spec.ttlSecondsAfterFinished, else "
    "KUBESTEP_RUN_TTL_SECONDS), their journal ConfigMaps with them; a run found gone already is not counted.",
)
EXPIRING = Gauge(
    "kubestep_operator_expiring_runs",
    "Finished runs with a TTL that the operator will delete when it runs out.",
)
