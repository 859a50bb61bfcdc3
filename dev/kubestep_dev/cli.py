"""`kubestep dev up|down|status|env`: the local control plane from the shell.

The `kubestep` CLI finds `add_parser()` through the `kubestep.commands` entry point
(pyproject.toml), as it finds the operator's. This module imports nothing heavy (no
`httpx`, no `cryptography`) until a subcommand runs, so the CLI loads without the
`dev` extra and a subcommand that needs it names it.

Every subcommand handler is stored as `func` in the parsed namespace and
returns the process exit code: `return args.func(args)`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubestep_dev.controlplane import ControlPlane

Handler = Callable[[argparse.Namespace], int]


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add `dev` with its subcommands to a parent CLI's subparsers; return the `dev` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        help="where certificates, etcd data, logs and the kubeconfig live "
        "(default: $KUBESTEP_DEV_DIR or ~/.cache/kubestep/dev)",
    )
    ports = argparse.ArgumentParser(add_help=False)
    group = ports.add_argument_group("ports (default: the last `up`, else 6443/2379/2380/10257)")
    group.add_argument("--apiserver-port", type=int, help="$KUBESTEP_DEV_APISERVER_PORT")
    group.add_argument("--etcd-client-port", type=int, help="$KUBESTEP_DEV_ETCD_CLIENT_PORT")
    group.add_argument("--etcd-peer-port", type=int, help="$KUBESTEP_DEV_ETCD_PEER_PORT")
    group.add_argument("--controller-manager-port", type=int, help="$KUBESTEP_DEV_CONTROLLER_MANAGER_PORT")

    dev = subparsers.add_parser(
        "dev",
        help="run a local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) for development",
        description="A local Kubernetes control plane for development and tests. "
        "No kubelet: pods never run, but the API server, CRD validation, RBAC and "
        "garbage collection are real. Build the binaries first with `make tools`.",
    )
    dev.set_defaults(func=_help(dev))
    sub = dev.add_subparsers(title="commands", metavar="COMMAND")

    up = sub.add_parser(
        "up",
        parents=[common, ports],
        help="start (or check) the control plane and install the Kubestep CRDs",
    )
    up.add_argument(
        "--advertise-address",
        help="for a plane with a node (hack/node/): listen on every address of this network namespace and "
        "publish this one as the `kubernetes` Service's endpoint ($KUBESTEP_DEV_ADVERTISE_ADDRESS)",
    )
    up.add_argument(
        "--crds-dir",
        type=Path,
        help="CRD manifests to install (default: $KUBESTEP_CRDS_DIR or the repository's crds/)",
    )
    up.set_defaults(func=_up)

    down = sub.add_parser("down", parents=[common, ports], help="stop the control plane")
    down.add_argument(
        "--purge",
        action="store_true",
        help="also delete the state directory (certificates, etcd data, logs)",
    )
    down.set_defaults(func=_down)

    status = sub.add_parser(
        "status",
        parents=[common, ports],
        help="show each component; exit code 0 only if all are up and healthy",
    )
    status.set_defaults(func=_status)

    env = sub.add_parser(
        "env",
        parents=[common, ports],
        help='print shell exports for kubectl: eval "$(kubestep dev env)"',
    )
    env.set_defaults(func=_env)
    return dev


def run(argv: Sequence[str] | None = None) -> int:
    """Run `dev ...` standalone (`python -m kubestep_dev.cli up`)."""
    parser = argparse.ArgumentParser(prog="kubestep")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["dev", *(sys.argv[1:] if argv is None else argv)])
    func: Handler = args.func
    return func(args)


def _help(parser: argparse.ArgumentParser) -> Handler:
    def show(_: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


def _plane(args: argparse.Namespace) -> ControlPlane:
    from kubestep_dev.errors import ControlPlaneError

    try:
        from kubestep_dev.controlplane import ControlPlane
    except ModuleNotFoundError as e:  # httpx; cryptography is checked where the certificates are made
        raise ControlPlaneError(
            f"the local control plane needs the dev extra: pip install 'kubestep[dev]' ({e})"
        ) from e
    return ControlPlane(
        args.state_dir,
        apiserver_port=args.apiserver_port,
        etcd_client_port=args.etcd_client_port,
        etcd_peer_port=args.etcd_peer_port,
        controller_manager_port=args.controller_manager_port,
        crds_dir=getattr(args, "crds_dir", None),
        advertise_address=getattr(args, "advertise_address", None),
    )


def _guard(action: Handler) -> Handler:
    def guarded(args: argparse.Namespace) -> int:
        from kubestep_dev.errors import ControlPlaneError

        try:
            return action(args)
        except ControlPlaneError as e:
            print(f"kubestep dev: error: {e}", file=sys.stderr)
            return 1

    return guarded


@_guard
def _up(args: argparse.Namespace) -> int:
    plane = _plane(args)
    result = plane.up()
    if result.was_running:
        print(f"kubestep dev: control plane already running ({result.seconds:.2f} s to check)")
    else:
        print(f"kubestep dev: control plane up in {result.seconds:.1f} s (started {', '.join(result.started)})")
    print(f"  API server:  {plane.server}")
    print(f"  state dir:   {plane.state_dir}")
    print(f"  kubeconfig:  {plane.kubeconfig}")
    print("Point kubectl at it with:")
    print('  eval "$(kubestep dev env)"')
    print("Stop it with: kubestep dev down")
    return 0


@_guard
def _down(args: argparse.Namespace) -> int:
    plane = _plane(args)
    start = time.monotonic()
    stopped = plane.down(purge=args.purge)
    took = time.monotonic() - start
    if stopped:
        print(f"kubestep dev: stopped {', '.join(stopped)} in {took:.1f} s")
    else:
        print("kubestep dev: nothing was running")
    if args.purge:
        print(f"kubestep dev: removed {plane.state_dir}")
    return 0


@_guard
def _status(args: argparse.Namespace) -> int:
    plane = _plane(args)
    statuses = plane.status()
    print(f"state dir: {plane.state_dir}")
    for status in statuses.values():
        print(status.describe())
    if all(s.healthy for s in statuses.values()):
        print(f"kubeconfig: {plane.kubeconfig}")
        return 0
    return 1


@_guard
def _env(args: argparse.Namespace) -> int:
    sys.stdout.write(_plane(args).env())
    return 0


if __name__ == "__main__":
    sys.exit(run())
