"""Settings of a worker and of the operator: built once, from flags, then the environment, then the
defaults, and passed down. Nothing else reads the environment (kopf's ``OperatorSettings`` is the model).

| setting | flag | environment | default |
|---|---|---|---|
| lease duration (s) | ``--lease-seconds`` | ``KUBESTEP_LEASE_SECONDS`` | 15 |
| grace period after a stop (s) | | ``KUBESTEP_CANCEL_GRACE_SECONDS`` | 30 |
| metrics port | ``--metrics-port`` | ``KUBESTEP_METRICS_PORT`` | off |
| worker: runs at once | ``--concurrency`` | | 10 |
| worker: checkpoint interval (s) | | ``KUBESTEP_CHECKPOINT_SECONDS`` | 0 (every step) |
| worker: step records in status | | ``KUBESTEP_STATUS_STEPS`` | 8 |
| worker: where a step is made durable: ``batch`` (the step journal), ``status`` or ``postgres`` | ``--step-store`` | ``KUBESTEP_STEP_STORE`` | batch |
| worker and client: the Postgres step store's DSN (or a file holding it, a mounted Secret) | | ``KUBESTEP_POSTGRES_DSN``, ``KUBESTEP_POSTGRES_DSN_FILE`` | none |
| worker: with the Postgres store, how long a finished run is kept there after it ended (days), then deleted with its records by the namespace's workers | | ``KUBESTEP_POSTGRES_RETENTION_DAYS`` | none: kept (the chart sets 30) |
| worker: with the step journal, how often a running run's status catches up (s) | | ``KUBESTEP_STATUS_SECONDS`` | 5 |
| worker: connections for step writes | | ``KUBESTEP_HTTP_CONNECTIONS`` | 24 |
| worker: log level | | ``KUBESTEP_LOG_LEVEL`` | INFO |
| worker: the runs it claims (``spec.queue``) | ``--queue`` | ``KUBESTEP_QUEUE`` | none: the default queue |
| worker: identity | | ``POD_NAME``, ``POD_NAMESPACE``, ``POD_UID`` | host name and process id, kubeconfig's namespace |
| operator: writes in flight | | ``KUBESTEP_OPERATOR_WRITERS`` | 8 |
| operator: bytes a page of runs should weigh when listing | | ``KUBESTEP_OPERATOR_LIST_BYTES`` | 4 MiB (0: pages of 500) |
| operator: how often it collects the StepBatches no run needs any more (s; 0: never) | | ``KUBESTEP_OPERATOR_COLLECT_SECONDS`` | 15 |
| operator: how long a finished run is kept (s) before it is deleted, for runs whose spec sets no ``ttlSecondsAfterFinished`` | | ``KUBESTEP_RUN_TTL_SECONDS`` | none: kept until deleted (the chart sets a day) |
| who cancelled: trust the audit annotation | | ``KUBESTEP_CANCEL_AUDIT`` | false (the chart sets it with ``cancelAudit.enabled``) |
| operator: leader election | ``--leader-elect`` | | off (the chart turns it on) |
| operator: its Lease | ``--leader-election-namespace``, ``--leader-election-id`` | ``POD_NAMESPACE`` | kubestep-operator |
| operator: leader's lease / renew deadline / retry (s) | | ``KUBESTEP_LEADER_LEASE_SECONDS``, ``..._RENEW_DEADLINE``, ``..._RETRY_PERIOD`` | 15 / 10 / 2 |
| operator: identity | | ``POD_NAME`` | host name and process id |
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import socket
from collections.abc import Mapping
from typing import Any

LEASE_SECONDS = 15
GRACE_SECONDS = 30.0
STATUS_STEPS = 8
HTTP_CONNECTIONS = 24
OPERATOR_WRITERS = 8


def _pick(flag: Any, env: Mapping[str, str], name: str, default: Any, kind: type = str) -> Any:
    if flag is not None:
        return flag
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a valid {kind.__name__}") from None


def default_worker_name() -> str:
    """A local worker's identity without ``POD_NAME``: unique per process (two workers on one host
    once shared the host name, and so one Lease). Lower case: it names a Lease."""
    return f"{socket.gethostname().lower()}-{os.getpid()}"


def _queue(name: str) -> str:
    if name and not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
        raise SystemExit(f"queue {name!r}: lower-case letters, digits and '-', at most 63 (as spec.queue)")
    return name


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SystemExit(f"{name}={env[name]!r} is not a valid flag (true or false)")


MAX_RUN_TTL_SECONDS = 315_360_000  # ten years, as spec.ttlSecondsAfterFinished's maximum


def _ttl(value: int | None) -> int | None:
    if value is not None and not 0 <= value <= MAX_RUN_TTL_SECONDS:
        raise SystemExit(f"KUBESTEP_RUN_TTL_SECONDS={value}: expected 0 to {MAX_RUN_TTL_SECONDS} (or unset: keep runs)")
    return value


STEP_STORES = ("batch", "status", "postgres")
STATUS_SECONDS = 5.0


def _store(value: str) -> str:
    if value not in STEP_STORES:
        raise SystemExit(f"KUBESTEP_STEP_STORE={value!r}: expected one of {', '.join(STEP_STORES)}")
    return value


def postgres_dsn(env: Mapping[str, str] = os.environ) -> str | None:
    """The Postgres step store's DSN: ``KUBESTEP_POSTGRES_DSN``, else the content of the file
    ``KUBESTEP_POSTGRES_DSN_FILE`` names (a Secret mounted as a file keeps it out of the pod's spec
    and environment listing); None if neither is set."""
    dsn = env.get("KUBESTEP_POSTGRES_DSN", "").strip()
    if dsn:
        return dsn
    path = env.get("KUBESTEP_POSTGRES_DSN_FILE", "").strip()
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError as e:
        raise SystemExit(f"KUBESTEP_POSTGRES_DSN_FILE={path!r}: cannot read it: {e.strerror}") from None


def _postgres(store: str, env: Mapping[str, str]) -> str | None:
    """The DSN, checked when the Postgres store is chosen: a worker that would fail at its first
    step instead says at start-up what is missing."""
    dsn = postgres_dsn(env)
    if store != "postgres":
        return dsn
    if dsn is None:
        raise SystemExit(
            "KUBESTEP_STEP_STORE=postgres needs the database: set KUBESTEP_POSTGRES_DSN "
            "(postgresql://user:password@host:5432/db) or KUBESTEP_POSTGRES_DSN_FILE (a file holding it)"
        )
    if importlib.util.find_spec("asyncpg") is None:
        raise SystemExit("KUBESTEP_STEP_STORE=postgres needs asyncpg: pip install 'kubestep[postgres]'")
    return dsn


def _retention_days(env: Mapping[str, str]) -> float | None:
    days: float | None = _pick(None, env, "KUBESTEP_POSTGRES_RETENTION_DAYS", None, float)
    if days is not None and not 0 < days <= 36500:  # also NaN
        raise SystemExit(f"KUBESTEP_POSTGRES_RETENTION_DAYS={days!r}: expected days, more than 0 and at most 36500")
    return days


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    module: str
    namespace: str | None = None  # None: the kubeconfig's
    name: str = dataclasses.field(default_factory=lambda: default_worker_name())
    pod_uid: str | None = None
    concurrency: int = 10
    lease_seconds: int = LEASE_SECONDS
    grace_seconds: float = GRACE_SECONDS
    checkpoint_seconds: float = 0.0
    status_steps: int = STATUS_STEPS
    # "batch": group commit into StepBatches; "status": each step a status write; "postgres": group
    # commit into Postgres rows (``postgres_dsn``)
    step_store: str = "batch"
    postgres_dsn: str | None = dataclasses.field(default=None, repr=False)  # a password may be in it
    # The Postgres store's archive of finished runs: kept this many days after they ended; None: kept
    postgres_retention_days: float | None = None
    status_seconds: float = STATUS_SECONDS
    http_connections: int = HTTP_CONNECTIONS
    metrics_port: int | None = None
    health_port: int | None = None  # /healthz and /readyz for the kubelet; None: off
    log_level: str = "INFO"
    cancel_audit: bool = False  # KUBESTEP_CANCEL_AUDIT: the canceller annotation is vouched for
    queue: str = ""  # --queue / KUBESTEP_QUEUE: the runs it claims (spec.queue); "": the default queue

    @classmethod
    def load(
        cls,
        module: str,
        *,
        env: Mapping[str, str] = os.environ,
        concurrency: int | None = None,
        namespace: str | None = None,
        lease_seconds: int | None = None,
        metrics_port: int | None = None,
        health_port: int | None = None,
        queue: str | None = None,
        step_store: str | None = None,
    ) -> WorkerSettings:
        store = _store(step_store or env.get("KUBESTEP_STEP_STORE") or "batch")
        return cls(
            module=module,
            namespace=namespace or env.get("POD_NAMESPACE") or None,
            name=env.get("POD_NAME") or default_worker_name(),
            pod_uid=env.get("POD_UID") or None,
            concurrency=concurrency if concurrency is not None else 10,
            lease_seconds=_pick(lease_seconds, env, "KUBESTEP_LEASE_SECONDS", LEASE_SECONDS, int),
            grace_seconds=_pick(None, env, "KUBESTEP_CANCEL_GRACE_SECONDS", GRACE_SECONDS, float),
            checkpoint_seconds=_pick(None, env, "KUBESTEP_CHECKPOINT_SECONDS", 0.0, float),
            status_steps=_pick(None, env, "KUBESTEP_STATUS_STEPS", STATUS_STEPS, int),
            step_store=store,
            postgres_dsn=_postgres(store, env),
            postgres_retention_days=_retention_days(env),
            status_seconds=_pick(None, env, "KUBESTEP_STATUS_SECONDS", STATUS_SECONDS, float),
            http_connections=_pick(None, env, "KUBESTEP_HTTP_CONNECTIONS", HTTP_CONNECTIONS, int),
            metrics_port=_pick(metrics_port, env, "KUBESTEP_METRICS_PORT", None, int) or None,
            health_port=_pick(health_port, env, "KUBESTEP_HEALTH_PORT", None, int) or None,
            log_level=_pick(None, env, "KUBESTEP_LOG_LEVEL", "INFO").upper(),
            cancel_audit=_flag(env, "KUBESTEP_CANCEL_AUDIT"),
            queue=_queue(queue or env.get("KUBESTEP_QUEUE") or ""),
        )


@dataclasses.dataclass(frozen=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    lease_seconds: int = LEASE_SECONDS
    grace_seconds: float = GRACE_SECONDS
    writers: int = OPERATOR_WRITERS
    metrics_port: int | None = None
    liveness_endpoint: str | None = None
    verbose: bool = False
    leader_election: bool = False
    leader_namespace: str | None = None
    leader_lease_name: str = "kubestep-operator"
    identity: str = dataclasses.field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    leader_lease_seconds: float = 15.0
    leader_renew_deadline: float = 10.0
    leader_retry_period: float = 2.0
    cancel_audit: bool = False  # KUBESTEP_CANCEL_AUDIT: the canceller annotation is vouched for
    list_bytes: int = 4 << 20  # KUBESTEP_OPERATOR_LIST_BYTES: a page of runs' weight (0: pages of 500)
    collect_seconds: float = 15.0  # KUBESTEP_OPERATOR_COLLECT_SECONDS: StepBatch collection sweeps (0: none)
    # KUBESTEP_RUN_TTL_SECONDS: finished runs whose spec sets no ttlSecondsAfterFinished are deleted this
    # long after they finished; None: kept until someone deletes them.
    run_ttl_seconds: int | None = None

    @classmethod
    def load(
        cls,
        *,
        env: Mapping[str, str] = os.environ,
        namespaces: tuple[str, ...] = (),
        all_namespaces: bool = False,
        metrics_port: int | None = None,
        liveness_endpoint: str | None = None,
        verbose: bool = False,
        leader_election: bool = False,
        leader_namespace: str | None = None,
        leader_lease_name: str | None = None,
    ) -> OperatorSettings:
        lease = _pick(None, env, "KUBESTEP_LEADER_LEASE_SECONDS", 15.0, float)
        renew = _pick(None, env, "KUBESTEP_LEADER_RENEW_DEADLINE", min(10.0, lease * 2 / 3), float)
        if leader_election and not renew < lease:
            raise SystemExit(f"the leader's renew deadline ({renew:g} s) must be shorter than its lease ({lease:g} s)")
        return cls(
            namespaces=tuple(namespaces),
            all_namespaces=all_namespaces,
            lease_seconds=_pick(None, env, "KUBESTEP_LEASE_SECONDS", LEASE_SECONDS, int),
            grace_seconds=_pick(None, env, "KUBESTEP_CANCEL_GRACE_SECONDS", GRACE_SECONDS, float),
            writers=_pick(None, env, "KUBESTEP_OPERATOR_WRITERS", OPERATOR_WRITERS, int),
            metrics_port=_pick(metrics_port, env, "KUBESTEP_METRICS_PORT", None, int) or None,
            liveness_endpoint=liveness_endpoint,
            verbose=verbose,
            leader_election=leader_election,
            leader_namespace=leader_namespace or env.get("POD_NAMESPACE") or None,
            leader_lease_name=leader_lease_name or "kubestep-operator",
            identity=env.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
            leader_lease_seconds=lease,
            leader_renew_deadline=renew,
            leader_retry_period=_pick(None, env, "KUBESTEP_LEADER_RETRY_PERIOD", min(2.0, lease / 5), float),
            cancel_audit=_flag(env, "KUBESTEP_CANCEL_AUDIT"),
            list_bytes=_pick(None, env, "KUBESTEP_OPERATOR_LIST_BYTES", 4 << 20, int),
            collect_seconds=_pick(None, env, "KUBESTEP_OPERATOR_COLLECT_SECONDS", 15.0, float),
            run_ttl_seconds=_ttl(_pick(None, env, "KUBESTEP_RUN_TTL_SECONDS", None, int)),
        )
