"""The ``kubestep worker`` command, found by the ``kubestep`` CLI through the entry point
``kubestep.commands`` (as the operator's is), so the worker runtime never imports the CLI. Imports
nothing of the runtime until it runs.

``MODULE`` is a module name (``myflows``, ``team.flows``), found from the current directory and
``sys.path``, or a file (``myflows.py``, ``path/to/flows.py``) or package directory, imported from
where it lies. A module that cannot be found is one line and exit 2, not a traceback; an error
raised by the module's own code keeps its traceback, which says where.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

EXIT_USAGE = 2


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    w = sub.add_parser(
        "worker",
        help="serve the workflows of a Python module",
        description="Serve the @workflow functions of MODULE: claim their queued runs and execute them. "
        "On SIGTERM it finishes the steps in flight and hands its runs back.",
    )
    w.add_argument(
        "module",
        metavar="MODULE",
        help="the module that declares @workflow functions: a module name (myflows, team.flows) "
        "or a file (myflows.py, path/to/flows.py)",
    )
    w.add_argument("--concurrency", type=_at_least_one, default=10, help="runs executed at once (default 10)")
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
    w.add_argument(
        "--step-store",
        choices=["batch", "status", "postgres"],
        help="where a step is made durable: batch (StepBatches), status (a status write per step) or postgres "
        "(needs $KUBESTEP_POSTGRES_DSN or $KUBESTEP_POSTGRES_DSN_FILE and kubestep[postgres]) "
        "(default $KUBESTEP_STEP_STORE or batch)",
    )
    w.set_defaults(func=main)


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(args: argparse.Namespace) -> int:
    module = import_workflows(args.module)
    if module is None:
        return EXIT_USAGE
    from .._settings import WorkerSettings
    from .main import run

    run(
        WorkerSettings.load(
            module,
            concurrency=args.concurrency,
            namespace=args.namespace,
            lease_seconds=args.lease_seconds,
            metrics_port=args.metrics_port,
            health_port=args.health_port,
            queue=args.queue,
            step_store=args.step_store,
        )
    )
    return 0


def import_workflows(target: str) -> str | None:
    """Imports ``target`` (a module name, a ``.py`` file or a package directory) and returns its
    module name; or says in one line on stderr why it cannot, and returns None."""
    try:
        name, directory = module_of(target)
    except ValueError as e:
        print(f"kubestep worker: {e}", file=sys.stderr)
        return None
    # As `python -m` does: modules beside the current directory are found first (the console script's
    # sys.path starts with its own bin directory instead). A file's directory goes before it.
    for entry in (os.getcwd(), directory):
        if entry is not None and entry not in sys.path[:2]:
            sys.path.insert(0, entry)
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        missing = e.name or ""
        if missing != name and not name.startswith(missing + "."):
            raise  # the module itself imports something missing: its traceback says where
        print(f"kubestep worker: cannot import {name}: {e}", file=sys.stderr)
        return None
    if directory is not None:
        found = getattr(module, "__file__", None) or ""
        where = Path(found).resolve() if found else None
        if where is None or Path(directory) not in (where.parent, where.parent.parent):
            print(
                f"kubestep worker: cannot import {target}: a module named {name} is already imported "
                f"from {found or 'the interpreter'}; rename the file",
                file=sys.stderr,
            )
            return None
    return name


def module_of(target: str) -> tuple[str, str | None]:
    """The module name ``target`` names, and the directory to import it from (None: ``sys.path``).
    A file path (``myflows.py``, ``path/to/flows.py``) or a package directory names the module of
    that file; anything else is a module name."""
    looks_like_path = target.endswith(".py") or os.sep in target or "/" in target
    if not looks_like_path:
        if not all(part.isidentifier() for part in target.split(".")):
            raise ValueError(f"{target!r} is not a module name (myflows, team.flows) nor a file (myflows.py)")
        return target, None
    path = Path(target).expanduser().resolve()
    if path.is_dir():
        if not (path / "__init__.py").is_file():
            raise ValueError(f"{target} is a directory without __init__.py: give the module's file")
    elif not path.is_file():
        raise ValueError(f"cannot import {target}: no such file")
    elif path.suffix != ".py":
        raise ValueError(f"cannot import {target}: not a Python file (.py)")
    name = path.name if path.is_dir() else path.stem
    if not name.isidentifier():
        raise ValueError(f"cannot import {target}: {name!r} is not a valid module name")
    return name, str(path.parent)
