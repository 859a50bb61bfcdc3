"""The ``kubestep operator`` command, found by the ``kubestep`` CLI through the entry point
``kubestep.commands`` (so the SDK never imports the operator). Imports nothing heavy until it runs."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    o = sub.add_parser("operator", help="run the operator (needs the [operator] extra)")
    o.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="namespace to serve (repeatable); shell patterns such as t-* need cluster-wide read access",
    )
    o.add_argument("--all-namespaces", "-A", action="store_true", help="serve every namespace")
    o.add_argument("--liveness", help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    o.add_argument(
        "--metrics-port", type=int, help="serve Prometheus /metrics here (default $KUBESTEP_METRICS_PORT; off)"
    )
    o.add_argument(
        "--leader-elect",
        action="store_true",
        help="run several replicas: the one holding a coordination.k8s.io Lease acts, the others stand by",
    )
    o.add_argument("--leader-election-namespace", help="the Lease's namespace (default $POD_NAMESPACE)")
    o.add_argument("--leader-election-id", help="the Lease's name (default kubestep-operator)")
    o.add_argument("--verbose", "-v", action="store_true")
    o.set_defaults(func=main)


def main(args: Any) -> int:
    from kubestep._settings import OperatorSettings

    try:
        from .running import run
    except ImportError as e:
        sys.exit(f"kubestep operator needs the operator extra: pip install 'kubestep[operator]' ({e})")
    run(
        OperatorSettings.load(
            namespaces=tuple(args.namespace),
            all_namespaces=args.all_namespaces,
            metrics_port=args.metrics_port,
            liveness_endpoint=args.liveness,
            verbose=args.verbose,
            leader_election=args.leader_elect,
            leader_namespace=args.leader_election_namespace,
            leader_lease_name=args.leader_election_id,
        )
    )
    return 0
