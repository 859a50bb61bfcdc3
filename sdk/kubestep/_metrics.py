"""Prometheus metrics of the worker, served on ``--metrics-port``.

One registry per process (prometheus_client's default); the worker's and the
operator's metrics are prefixed ``kubestep_worker_`` and
``kubestep_operator_`` so one scrape config can take both. The status-write
histogram is the one to watch first: every step record and every ending is a
write to the apiserver, and its latency bounds how fast steps and cancels go
(``bench/README.md``).
"""

from __future__ import annotations

import gc
import logging
import time

from prometheus_client import Counter, Gauge, Histogram, start_http_server

logger = logging.getLogger("kubestep.metrics")

RUNS_ACTIVE = Gauge("kubestep_worker_runs_active", "Runs this worker holds now.", ["workflow"])
RUNS_ENDED = Counter(
    "kubestep_worker_runs_ended_total",
    "Runs this worker let go of, by how: Completed, Failed, Cancelled, Waiting (released until its timer), "
    "handback (SIGTERM), lost, deleted, error.",
    ["workflow", "outcome"],
)
STEPS = Counter(
    "kubestep_worker_steps_total",
    "Steps by what happened: Completed or Failed (ran here), Interrupted (the grace period or its timeout "
    "ran out), Replayed (output taken from the record).",
    ["workflow", "state"],
)
STEP_SECONDS = Histogram(
    "kubestep_worker_step_seconds",
    "Time inside ctx.step.run functions that ran here.",
    ["workflow"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
WATCH_EVENTS = Counter(
    "kubestep_worker_watch_events_total",
    "Watch events this worker received (listed objects included): what each write fans out to.",
    ["stream"],
)
BATCH_RECORDS = Histogram(
    "kubestep_worker_batch_records",
    "Step records made durable by one StepBatch write (group commit)",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)
BATCH_WRITE_SECONDS = Histogram(
    "kubestep_worker_batch_write_seconds",
    "Time to write one StepBatch",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)
LOOP_LAG_SECONDS = Histogram(
    "kubestep_worker_loop_lag_seconds",
    "How late the worker's event loop ran a timer: a watch event (a cancel) waits as long to be read.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
GC_PAUSE_SECONDS = Histogram(
    "kubestep_gc_pause_seconds",
    "Python's cyclic garbage collections by generation (2: a full one): the whole process, its event "
    "loop included, stands still for each.",
    ["generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
STATUS_WRITE_SECONDS = Histogram(
    "kubestep_worker_status_write_seconds",
    "Latency of the worker's status writes, by kind: claim, steps, end.",
    ["kind"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# Every list-and-watch loop of the process (``_informer.py``), by informer (its collection's path or name).
INFORMER_RELISTS = Counter(
    "kubestep_informer_relists_total",
    "Lists after an informer's first: each re-reads the whole collection (only after a 410 Gone).",
    ["informer"],
)
INFORMER_RESUMES = Counter(
    "kubestep_informer_resumes_total",
    "Watches opened again from the last resourceVersion seen (the server's timeout, a cut, a refusal).",
    ["informer"],
)
INFORMER_HANDLER_ERRORS = Counter(
    "kubestep_informer_handler_errors_total",
    "Objects whose change a handler failed on (logged; the informer carries on).",
    ["informer"],
)


def time_gc() -> None:
    """Times every cyclic collection into ``kubestep_gc_pause_seconds`` (``gc.callbacks``)."""
    started: list[float] = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            GC_PAUSE_SECONDS.labels(str(info["generation"])).observe(time.perf_counter() - started[0])

    gc.callbacks.append(callback)


def serve(port: int | None) -> None:
    """Starts the /metrics endpoint on ``port`` (all interfaces) when one is given (``_settings``)."""
    if port:
        time_gc()
        start_http_server(port)
        logger.info("metrics on :%d/metrics", port)
