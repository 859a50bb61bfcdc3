"""The ``kubestep`` command (console script ``kubestep = "kubestep._cli:main"``).

``build_parser`` gathers the commands: those for people (``commands``: run, cancel, get, describe,
steps, watch, send-event), ``completion``, and those of other packages found through the entry point
``kubestep.commands`` (``worker`` from ``kubestep._worker.cli``, ``operator``, ``dev``), so nothing
below the CLI imports it. One convention: every subcommand sets ``func(args) -> int``, the exit code.
``main`` runs it, and ends quietly when stdout is closed early (``kubestep get | head``: 141, as a
process killed by SIGPIPE) or on Ctrl-C (130).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from collections.abc import Sequence

from .commands import EXIT_INTERRUPTED, add_parsers

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Durable Python workflows on Kubernetes: start, follow and cancel runs (run, get, describe,
steps, watch, cancel, send-event), serve workflows (worker), run the operator (operator),
and a local control plane (dev)."""
EPILOG = """\
exit codes:
  0    done; watch and run --wait: the run Completed
  1    an error; watch and run --wait: the run Failed
  2    a usage error
  3    watch and run --wait: the run was Cancelled
  4    a run named on the command line does not exist
  5    watch --timeout or run --wait-timeout passed, the run still going
  130  interrupted

docs/cli.md has more."""

#: ``kubestep get | head``: stdout closed early. A process killed by SIGPIPE reports 128 + 13.
EXIT_BROKEN_PIPE = 141


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubestep", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    p = sub.add_parser("completion", help="print a shell completion script: bash, zsh or tcsh")
    p.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    p.set_defaults(func=_completion)

    # Commands of other packages (the worker's, the operator's, `dev`): found by entry point, so none of
    # them imports the CLI and the SDK imports none of them.
    for entry in importlib.metadata.entry_points(group="kubestep.commands"):
        try:
            add_parser = entry.load()
        except ModuleNotFoundError as e:
            # Registered but not installed (the image leaves `kubestep_dev` out): no such command here.
            if e.name is None or not f"{entry.module}.".startswith(f"{e.name}."):
                raise  # the command is there but something it imports is not: say so
            continue
        add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    try:
        args = build_parser().parse_args(argv)  # loads the commands of other packages
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(run(args))


def run(args: argparse.Namespace) -> int:
    """Runs the command ``args`` names; its exit code."""
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe can still be caught
        return code
    except BrokenPipeError:
        # The reader went away (`kubestep get | head`). Python would complain again when it flushes
        # stdout at exit: point stdout at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _completion(args: argparse.Namespace) -> int:
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0
