"""What the operator knows of every run's place in its tree: pure, no I/O.

The informer tells the controller of each run as it changes, finished runs included; ``Kinship``
keeps, per run, its uid, its parent link (the controller ownerReference: name and uid), whether it has
ended, and why its children must stop (``family.parent_stop``), and indexes children by parent. The
controller asks it two things of a run before deciding on it (``reconciling.decide``): must it stop
because of its parent, and has every child it waits for ended. It answers which runs to look at again
when one changes: the children of a run that now stops, the parent of a run that now ends.

A child counts as its parent's only if the ownerReference's uid is the parent's: a run of the same name
created after the parent was deleted is not its parent.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kubestep import _protocol as api

from .keys import RunKey


@dataclasses.dataclass(frozen=True)
class Member:
    uid: str
    parent: tuple[str, str] | None  # (name, uid)
    ended: bool
    stop: str | None  # why its children must stop now (``family.parent_stop``), None while it goes on


class Kinship:
    def __init__(self) -> None:
        self._members: dict[RunKey, Member] = {}
        self._children: dict[RunKey, set[str]] = {}  # parent -> names of runs that name it as parent

    def __len__(self) -> int:
        return len(self._members)

    def seen(self, body: dict[str, Any]) -> tuple[list[RunKey], list[RunKey]]:
        """Records a run as it is now. Returns (children to look at again: this run's, if it now
        stops; parents to look at again: this run's, if it now ended)."""
        meta = body["metadata"]
        key = RunKey(meta["namespace"], meta["name"])
        phase = (body.get("status") or {}).get("phase")
        member = Member(
            str(meta.get("uid", "")),
            api.family.parent_of(body),
            phase in api.TERMINAL_PHASES,
            api.family.parent_stop(body),
        )
        before = self._members.get(key)
        self._link(key, before, member)
        self._members[key] = member
        children = self.children(key) if member.stop and (before is None or before.stop != member.stop) else []
        parents = []
        if member.ended and (before is None or not before.ended) and member.parent is not None:
            parents.append(RunKey(key.namespace, member.parent[0]))
        return children, parents

    def gone(self, key: RunKey) -> list[RunKey]:
        """A run was deleted. Returns its parent, to look at again (a child it waited for is gone)."""
        member = self._members.pop(key, None)
        if member is None:
            return []
        self._link(key, member, None)
        return [RunKey(key.namespace, member.parent[0])] if member.parent else []

    def listed(self, accept: Any, present: set[tuple[str, str]]) -> list[RunKey]:
        """After a (re-)list of a scope: runs deleted while the watch was down are forgotten. Returns
        their parents, to look at again (a child a parent waits for is gone)."""
        parents: list[RunKey] = []
        for key in [k for k in self._members if accept(k.namespace) and (k.namespace, k.name) not in present]:
            parents += self.gone(key)
        return list(dict.fromkeys(parents))

    def _link(self, key: RunKey, before: Member | None, after: Member | None) -> None:
        old = before.parent if before else None
        new = after.parent if after else None
        if old == new:
            return
        if old is not None:
            siblings = self._children.get(RunKey(key.namespace, old[0]))
            if siblings is not None:
                siblings.discard(key.name)
                if not siblings:
                    del self._children[RunKey(key.namespace, old[0])]
        if new is not None:
            self._children.setdefault(RunKey(key.namespace, new[0]), set()).add(key.name)

    def children(self, key: RunKey) -> list[RunKey]:
        """The runs whose ownerReference names ``key`` (and its uid)."""
        parent = self._members.get(key)
        names = self._children.get(key, ())
        out = []
        for name in names:
            child = self._members.get(RunKey(key.namespace, name))
            if parent is not None and child is not None and child.parent == (key.name, parent.uid):
                out.append(RunKey(key.namespace, name))
        return sorted(out, key=lambda k: k.name)

    def parent_stop(self, key: RunKey, parent: tuple[str, str] | None) -> str | None:
        """Why the run ``key`` must stop because of its parent, or None."""
        if parent is None:
            return None
        member = self._members.get(RunKey(key.namespace, parent[0]))
        if member is None or member.uid != parent[1]:
            return None  # not known (yet), or a different run of that name: the garbage collector's case
        return member.stop

    def all_ended(self, namespace: str, names: tuple[str, ...]) -> bool:
        """True if every run in ``names`` has ended or is gone (a deleted child has ended too: its
        parent's worker finds it missing and says so)."""
        for name in names:
            member = self._members.get(RunKey(namespace, name))
            if member is not None and not member.ended:
                return False
        return True
