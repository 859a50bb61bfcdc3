"""Typed names for what the operator tracks, so no user-chosen name can pass for an internal one.

A run named ``lease`` in a namespace named ``lease`` is just data: a ``RunKey`` never equals a
``LeaseKey`` (dataclass equality compares the class), unlike the plain tuples these replaced.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class RunKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseKey:
    """A worker's Lease, by the worker (its holder identity) rather than by the Lease's name."""

    namespace: str
    holder: str

    def __str__(self) -> str:
        return f"lease of {self.holder} in {self.namespace}"


@dataclasses.dataclass(frozen=True, slots=True)
class ExpiryKey:
    """A finished run's deletion at the end of its TTL (retention): planned and written apart from its
    decisions, so neither plan replaces the other in the scheduler or the write backlog."""

    namespace: str
    name: str

    @property
    def run(self) -> RunKey:
        return RunKey(self.namespace, self.name)

    def __str__(self) -> str:
        return f"expiry of {self.namespace}/{self.name}"
