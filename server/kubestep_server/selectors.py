"""Label selectors (``kubectl -l``) parsed and matched by the server itself, for the runs it answers
from its cache (``cache``), where the apiserver is not there to apply them. Pure.

The grammar is the apiserver's (``k8s.io/apimachinery/pkg/labels``): requirements separated by
commas, each ``key=value``, ``key==value``, ``key!=value``, ``key in (a,b)``, ``key notin (a,b)``,
``key`` (exists) or ``!key`` (does not exist). What the apiserver refuses is refused here too
(``SelectorError``, a 400), so a selector means the same through the cache as without it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

# A label key: an optional DNS-subdomain prefix and a name; a value: empty or a name.
_NAME = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
_KEY = re.compile(rf"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_NAME}")
_VALUE = re.compile(rf"({_NAME})?")
_TOKEN = re.compile(r"\s*(!=|==|=|\(|\)|,|!|[^\s!=(),]+)")


class SelectorError(ValueError):
    """Not a label selector the apiserver would take."""


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "in":
            return self.key in labels and labels[self.key] in self.values
        return self.key not in labels or labels[self.key] not in self.values  # notin, !=: absent matches


@dataclasses.dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


def parse(text: str | None) -> Selector:
    """``text`` as a selector (empty or None: everything)."""
    if not text or not text.strip():
        return Selector()
    tokens = _tokens(text)
    requirements: list[Requirement] = []
    i = 0
    while i < len(tokens):
        requirement, i = _requirement(tokens, i)
        requirements.append(requirement)
        if i < len(tokens):
            if tokens[i] != ",":
                raise SelectorError(f"unable to parse requirement: expected ',' but found {tokens[i]!r}")
            i += 1
            if i == len(tokens):
                raise SelectorError("unable to parse requirement: found a trailing ','")
    return Selector(tuple(requirements))


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None:  # pragma: no cover (the pattern matches any non-space)
            raise SelectorError(f"unable to parse the selector at {text[pos : pos + 20]!r}")
        out.append(match.group(1))
        pos = match.end()
    return out


def _key(token: str) -> str:
    if len(token) > 316 or not _KEY.fullmatch(token):
        raise SelectorError(f"invalid label key {token[:80]!r}")
    return token


def _value(token: str) -> str:
    if not _VALUE.fullmatch(token):
        raise SelectorError(f"invalid label value {token[:80]!r}")
    return token


def _requirement(tokens: list[str], i: int) -> tuple[Requirement, int]:
    if tokens[i] == "!":
        if i + 1 >= len(tokens):
            raise SelectorError("unable to parse requirement: '!' without a key")
        return Requirement(_key(tokens[i + 1]), "!exists"), i + 2
    key = _key(tokens[i])
    i += 1
    if i == len(tokens) or tokens[i] == ",":
        return Requirement(key, "exists"), i
    op = tokens[i]
    if op in ("=", "==", "!="):
        if i + 1 < len(tokens) and tokens[i + 1] not in (",", "(", ")", "!", "=", "==", "!="):
            value, i = _value(tokens[i + 1]), i + 2
        else:
            value, i = "", i + 1  # ``team=``: the empty value
        return Requirement(key, "notin" if op == "!=" else "in", frozenset({value})), i
    if op in ("in", "notin"):
        if i + 1 >= len(tokens) or tokens[i + 1] != "(":
            raise SelectorError(f"unable to parse requirement: expected '(' after {op!r}")
        i += 2
        values: set[str] = set()
        while True:
            if i >= len(tokens):
                raise SelectorError("unable to parse requirement: expected ')'")
            token = tokens[i]
            if token == ")":
                i += 1
                break
            if token == ",":
                i += 1
                continue
            if token in ("(", "!", "=", "==", "!="):
                raise SelectorError(f"unable to parse requirement: unexpected {token!r} in a set of values")
            values.add(_value(token))
            i += 1
        if not values:
            raise SelectorError(f"for {op!r}, the set of values must not be empty")
        return Requirement(key, op, frozenset(values)), i
    raise SelectorError(f"unable to parse requirement: unexpected {op!r} after the key {key!r}")
