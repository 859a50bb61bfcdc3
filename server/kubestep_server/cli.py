"""The ``kubestep server`` command, found by the ``kubestep`` CLI through the entry point
``kubestep.commands`` (so the SDK never imports the server). Imports nothing heavy until it runs."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from typing import Any


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser(
        "server",
        help="serve the HTTP API (docs/api.md); every request is made with its caller's Kubernetes token",
    )
    s.add_argument(
        "--namespace",
        "-n",
        help="the namespace of a request that names none (?namespace=); default: the kubeconfig's, in a pod its own",
    )
    s.add_argument("--host", default="0.0.0.0", help="the address to listen on (default 0.0.0.0)")
    s.add_argument("--port", type=int, default=8080, help="the port to listen on (default 8080)")
    s.add_argument(
        "--max-streams",
        type=_positive,
        default=1000,
        help="Server-Sent Event streams open at once; more are refused with 503 (default 1000)",
    )
    s.add_argument(
        "--secure-cookies",
        action="store_true",
        help="mark the UI's sign-in cookie Secure (it is whenever a request came over TLS; set this behind a TLS proxy)",
    )
    s.add_argument(
        "--cache",
        metavar="all|NS[,NS…]",
        help="answer lists and namespace streams from one shared watch of the runs of every namespace (all) or "
        "of those named, made with the server's own credentials (which then need get/list/watch on "
        "workflowexecutions there); callers are still authorized by the apiserver first. Default: off",
    )
    s.add_argument("--verbose", "-v", action="store_true")
    s.set_defaults(func=main)


def _cache_scope(value: str | None) -> tuple[str, ...] | None:
    if value is None or value.strip() in ("", "off"):
        return None
    if value.strip() == "all":
        return ()
    return tuple(sorted({ns.strip() for ns in value.split(",") if ns.strip()}))


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def main(args: Any) -> int:
    from aiohttp import web

    from kubestep import ConfigurationError, PostgresHistory
    from kubestep._kube import Kube

    from .app import AccessLogger, make_app
    from .settings import ServerSettings

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        # Only to find the apiserver (its URL and CA): no request is ever made with its credentials.
        base = Kube()
    except ConfigurationError as e:
        print(f"kubestep server: {e}", file=sys.stderr)
        return 2
    settings = ServerSettings(
        namespace=args.namespace or base.default_namespace or "default",
        max_streams=args.max_streams,
        secure_cookies=args.secure_cookies,
        cache_namespaces=_cache_scope(args.cache),
        postgres_dsn=PostgresHistory.dsn_from_env(),
    )
    scope = settings.cache_namespaces
    logging.getLogger("kubestep.server").info(
        "serving the API on %s:%d; default namespace %s; every request made with its caller's token; cache: %s; "
        "step history from: %s",
        args.host,
        args.port,
        settings.namespace,
        "off" if scope is None else (", ".join(scope) or "every namespace"),
        "postgres" if settings.postgres_dsn else "the cluster",
    )
    # SIGTERM and SIGINT stop it gracefully: open streams end at once (``app._closing``), requests
    # in flight get a few seconds.
    app = make_app(settings, base)
    gc.collect()  # what start-up imported stays: full collections need not walk it again
    gc.freeze()  # (as the worker and the operator do: kubestep/_procs.py, freeze_heap)
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        shutdown_timeout=5,
        print=None,
        access_log_class=AccessLogger,
    )
    return 0
