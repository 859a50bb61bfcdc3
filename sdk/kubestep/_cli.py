"""The ``kubestep`` command: runs for people (``run``, ``cancel``, ``get``, ``describe``, ``steps``,
``watch``, ``send-event``, ``completion``), the ``worker`` and the ``operator``, and ``dev`` (the
local control plane)."""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubestep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    from ._usercli import add_user_parsers

    add_user_parsers(sub)

    w = sub.add_parser("worker", help="serve the workflows of a Python module")
    w.add_argument("module", help="importable module that declares @workflow functions")
    w.add_argument("--concurrency", type=int, default=10, help="runs executed at once (default 10)")
    w.add_argument("--namespace", help="namespace to serve (default: $POD_NAMESPACE, then kubeconfig's)")
    w.add_argument("--lease-seconds", type=int, help="liveness lease duration (default $KUBESTEP_LEASE_SECONDS or 15)")
    w.add_argument(
        "--metrics-port", type=int, help="serve Prometheus /metrics here (default $KUBESTEP_METRICS_PORT; off)"
    )
    w.add_argument(
        "--health-port",
        type=int,
        help="serve the kubelet's probes here: /healthz (the worker's loop answers), /readyz (it claims runs) "
        "(default $KUBESTEP_HEALTH_PORT; off)",
    )
    w.add_argument("--queue", help="claim only runs of this queue (spec.queue; default $KUBESTEP_QUEUE; none)")

    # Commands of other packages (the operator's): found by entry point, so the SDK imports none of them.
    for entry in importlib.metadata.entry_points(group="kubestep.commands"):
        entry.load()(sub)

    from ._dev.cli import add_dev_parser  # imports without the [dev] extra; `up` names it if missing

    add_dev_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "afunc"):
        from ._usercli import run_handler

        sys.exit(run_handler(args))
    if args.command == "worker":
        if args.concurrency < 1:
            parser.error("--concurrency must be at least 1")
        from ._settings import WorkerSettings
        from ._worker.main import run as run_worker

        run_worker(
            WorkerSettings.load(
                args.module,
                concurrency=args.concurrency,
                namespace=args.namespace,
                lease_seconds=args.lease_seconds,
                metrics_port=args.metrics_port,
                health_port=args.health_port,
                queue=args.queue,
            )
        )
    else:
        sys.exit(args.func(args))


if __name__ == "__main__":
    main()
