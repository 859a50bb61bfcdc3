"""Errors of the local control plane."""

from __future__ import annotations

from collections.abc import Sequence


class ControlPlaneError(RuntimeError):
    """The local control plane could not be started, reached or stopped."""


class MissingBinaryError(ControlPlaneError):
    """A control-plane binary is not installed."""


class KubectlError(ControlPlaneError):
    """kubectl exited non-zero; carries its exit code and output."""

    def __init__(self, args: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(f"`kubectl {' '.join(args)}` failed with exit code {returncode}:\n{stderr.strip()}")
        self.kubectl_args = list(args)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
