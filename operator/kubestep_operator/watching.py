"""What the operator watches: the scopes (namespaces, or every namespace passing shell patterns), and
an informer per scope and collection, for every run and every worker Lease.

Why not kopf's watches and indexes, which the operator first used: kopf takes each event of each object
through its whole per-object handler machinery (about 2.5 ms of CPU per event on these machines), and
while it lists an indexed resource it keeps a readiness toggle per object, every change of which wakes
every object waiting for readiness: quadratic in the objects at start-up. Started on 1,000 runs that
cost 18 s of CPU before the first decision; on 10,000, more than ten minutes (issue 12). The informer is
the one every watcher of Kubestep uses (``kubestep._informer``, client-go's rules): each event costs a
JSON decode and a callback. kopf still runs the process around it: start-up, clean-up, signals and the
liveness endpoint.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from typing import Any

from kubestep._informer import Change, Informer
from kubestep._kube import Kube

from . import measuring

OnEvent = Callable[[str, dict[str, Any]], None]  # ("ADDED" | "MODIFIED" | "DELETED", object)
OnListed = Callable[["Scope", set[tuple[str, str]]], None]  # every (namespace, name) the latest list held


@dataclasses.dataclass(frozen=True)
class Scope:
    """Where an informer looks: one namespace, or every namespace whose name passes ``accept``."""

    namespace: str | None  # None: cluster-wide
    patterns: tuple[str, ...] = ()  # cluster-wide only: shell patterns a namespace must match (none: all)
    exclude: tuple[str, ...] = ()  # cluster-wide only: namespaces another scope covers

    def accept(self, namespace: str) -> bool:
        if self.namespace is not None:
            return namespace == self.namespace
        if namespace in self.exclude:
            return False
        return not self.patterns or any(fnmatch.fnmatchcase(namespace, p) for p in self.patterns)


def scopes(namespaces: list[str], all_namespaces: bool) -> list[Scope]:
    """One scope per named namespace (a namespaced Role suffices); shell patterns (``t-*``) need a
    cluster-wide list and watch, filtered here."""
    if all_namespaces:
        return [Scope(None)]
    exact = [n for n in namespaces if not any(c in n for c in "*?[")]
    patterns = tuple(n for n in namespaces if n not in exact)
    found = [Scope(n) for n in dict.fromkeys(exact)]
    if patterns:
        found.append(Scope(None, patterns, tuple(exact)))
    return found


def scoped_informer(
    kube: Kube,
    path: str,
    scope: Scope,
    on_event: OnEvent,
    on_listed: OnListed,
    params: dict[str, str] | None = None,
    page_bytes: int = 0,
) -> Informer:
    """The shared informer (``kubestep._informer``: its rules for lists, watches, resumes and
    backoff) over one collection, passing on only what ``scope`` accepts. A handler's failure is
    counted as the operator's too (``kubestep_operator_object_errors_total{stage="event"}``)."""

    def on_change(change: Change) -> None:
        if scope.accept(change.key[0]):
            on_event(change.kind, change.obj)

    def listed(keys: set[tuple[str, str]]) -> None:
        on_listed(scope, {k for k in keys if scope.accept(k[0])})

    return Informer(
        kube,
        path,
        on_change,
        listed,
        params=dict(params or {}),
        page_bytes=page_bytes,
        on_error=lambda change, e: measuring.OBJECT_ERRORS.labels("event").inc(),
    )
