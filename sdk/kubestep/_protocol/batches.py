"""The step journal's batches: what a StepBatch holds, which of its records count, when it is garbage.

Pure rules, no I/O: the worker writes batches and reads them back at a claim, the operator
collects them, the client reads them for a run's history. The same rules for all three.

**Why batches.** A step is durable once its record is in etcd. Writing it into its run's status
costs one API write per step, and the apiserver on two cores saturates near 200–300 small writes
a second. A worker instead gathers the records of all its runs that finished a step while the
previous write was in flight and writes them as one StepBatch (group commit), then lets each of
those runs start its next step. The run's status is brought up to date (a checkpoint) every few
seconds and at every phase change; until then its newest records live only in batches.

**Numbering.** Every record a holder makes durable gets the run's next log sequence number
(``lsn``: 1, 2, … over the run's whole life, across attempts). ``status.journalLsn`` is the
highest lsn that status (``steps`` and ``journal``) already reflects; a batch entry with a higher
lsn is newer than status.

**Fencing.** Batches are created, never updated, so nothing stops a holder that lost its run (its
Lease expired while it was cut off, say) from writing more of them. A claim therefore reads the
batches first and fixes, in its own resourceVersion-guarded write, how far each earlier attempt's
records count (``status.journalFences``: ``[{attempt, lsn}]``). Records an old holder writes
later lie beyond its fence and never count: the step they record runs again, exactly as when an
old holder's status write was refused. Records of one attempt count only as a gap-free run from
``journalLsn + 1``: a worker's batches of one flush may land in any order, and one that landed
after the claim read them must not count either.

**Garbage.** A batch may go once each run in it is gone, or checkpointed past the batch's records
(``journalLsn`` ≥ their last lsn, or ≥ the fence of their attempt), or past the attempt that wrote
them (a later attempt holds it and no fence names it). A run that ended while its status was behind
its batches (the operator ended it after its holder was lost) keeps them until it is deleted: they
are the end of its history (``kubestep steps``). The labels hold what the rule needs (``r.kubestep.io/<uid>:
"<attempt>.<last lsn>"``), so the collector reads only metadata.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from .names import GROUP, VERSION

BATCH_KIND: Final = "StepBatch"
BATCH_PLURAL: Final = "stepbatches"
LABEL_BATCH_WORKER: Final = "kubestep.io/batch-worker"  # the worker that wrote it (a hash if long)
LABEL_EPOCH: Final = "kubestep.io/epoch"  # the writer's clock, in EPOCH_SECONDS, when it wrote it
MEMBER_PREFIX: Final = "r.kubestep.io/"  # + a run's uid: "<attempt>.<last lsn>"
EPOCH_SECONDS: Final = 10

_VALUE = re.compile(r"(\d+)\.(\d+)")


def batch_path(namespace: str, name: str | None = None) -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{BATCH_PLURAL}"
    return f"{path}/{name}" if name else path


def member_label(uid: str) -> str:
    return MEMBER_PREFIX + uid


@dataclasses.dataclass(frozen=True)
class Member:
    """One run's share of a batch, as its label says."""

    uid: str
    attempt: int
    last_lsn: int


def members(labels: Mapping[str, str]) -> list[Member]:
    """The runs a batch holds records of, from its labels (ill-formed ones are skipped)."""
    out = []
    for key, value in labels.items():
        if not key.startswith(MEMBER_PREFIX):
            continue
        m = _VALUE.fullmatch(value)
        if m:
            out.append(Member(key[len(MEMBER_PREFIX) :], int(m.group(1)), int(m.group(2))))
    return out


def fences(status: Mapping[str, Any]) -> dict[int, int]:
    """``status.journalFences`` as {attempt: last lsn that counts}."""
    return {attempt: lsn for attempt, (lsn, _) in _fences(status).items()}


def _fences(status: Mapping[str, Any]) -> dict[int, tuple[int, str]]:
    """``status.journalFences`` as {attempt: (last lsn that counts, the worker that held it)}."""
    out: dict[int, tuple[int, str]] = {}
    for f in status.get("journalFences") or []:
        try:
            out[int(f["attempt"])] = (int(f["lsn"]), str(f.get("worker") or ""))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def journal_lsn(status: Mapping[str, Any]) -> int:
    try:
        return int(status.get("journalLsn") or 0)
    except (TypeError, ValueError):
        return 0


@dataclasses.dataclass(frozen=True)
class Entry:
    """One record made durable in a batch, and the worker that wrote the batch (``spec.worker``,
    which admission holds to the writer's own pod)."""

    attempt: int
    lsn: int
    record: dict[str, Any]
    worker: str = ""


def runs_json(runs: list[dict[str, Any]]) -> str:
    """``spec.runsJSON`` for ``runs`` (``[{name, uid, attempt, entries: [{lsn, record}]}]``)."""
    return json.dumps(runs, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def runs_of(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A batch's runs: ``spec.runsJSON`` parsed, or ``spec.runs`` (the form of earlier releases).
    The schema cannot check what a JSON text holds, so a text that is not a list of objects (any
    worker's token can create a batch naming itself) holds nothing."""
    text = spec.get("runsJSON")
    if text is None:
        runs: Any = spec.get("runs") or []
    else:
        try:
            runs = json.loads(text)
        except (TypeError, ValueError):
            return []
    return [r for r in runs if isinstance(r, Mapping)] if isinstance(runs, list) else []


def entries_of(batch: Mapping[str, Any], uid: str) -> list[Entry]:
    """The entries a batch object holds for the run ``uid`` (ill-formed ones are skipped: they
    never count, as a gap they leave is a gap ``counted`` stops at)."""
    out = []
    spec = batch.get("spec") or {}
    worker = str(spec.get("worker") or "")
    for run in runs_of(spec):
        if run.get("uid") != uid:
            continue
        try:
            attempt = int(run.get("attempt") or 0)
            for e in run.get("entries") or []:
                out.append(Entry(attempt, int(e["lsn"]), dict(e["record"]), worker))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def counted(status: Mapping[str, Any], entries: Iterable[Entry], *, open_attempt: int | None) -> list[Entry]:
    """The entries that count, in lsn order: those newer than status, of a fenced attempt up to its
    fence, or of ``open_attempt`` (the attempt a claim is about to close: any gap-free run of them).

    Each attempt's entries count only as a gap-free run from where the status or the previous
    attempt left off; an entry with an lsn already taken (a duplicate write) counts once. Only the
    batches of the worker that held an attempt count for it (``status.journalHolder``, then the
    fence's ``worker``): another worker's token may create batches naming any run, but admission
    holds ``spec.worker`` to its own pod, so it cannot pass off records as the holder's."""
    base = journal_lsn(status)
    fenced = _fences(status)
    holder = str(status.get("journalHolder") or "")
    by_lsn: dict[int, Entry] = {}
    for e in entries:
        if e.lsn <= base:
            continue
        if e.attempt in fenced:
            last, worker = fenced[e.attempt]
            if e.lsn > last or e.worker != worker:
                continue
        elif e.attempt != open_attempt or not holder or e.worker != holder:
            continue
        by_lsn.setdefault(e.lsn, e)
    out: list[Entry] = []
    lsn = base
    # Gap-free from base: attempts follow each other (a later attempt continues the numbering).
    while lsn + 1 in by_lsn:
        lsn += 1
        out.append(by_lsn[lsn])
    return out


def fences_at_claim(status: Mapping[str, Any], counting: list[Entry]) -> list[dict[str, Any]]:
    """``status.journalFences`` for a claim that counts ``counting`` (``counted``): every attempt
    with records past ``journalLsn``, each up to its last counted record."""
    last: dict[int, Entry] = {}
    for e in counting:
        if e.attempt not in last or e.lsn > last[e.attempt].lsn:
            last[e.attempt] = e
    return [{"attempt": a, "lsn": e.lsn, "worker": e.worker} for a, e in sorted(last.items())]


def garbage(member: Member, status: Mapping[str, Any] | None) -> bool:
    """True if a batch's records of ``member`` are no longer needed (``status`` None: the run is gone)."""
    if status is None:
        return True
    if journal_lsn(status) >= member.last_lsn:
        return True
    fenced = fences(status)
    if member.attempt in fenced:
        # Its records up to the fence count until status has them; those past it never will.
        return journal_lsn(status) >= fenced[member.attempt]
    # A later attempt claimed the run without fencing this one in: never counted again.
    return int(status.get("attempt") or 0) > member.attempt


def fold(status: Mapping[str, Any], newer: list[Entry]) -> dict[str, Any]:
    """``status`` as its next checkpoint would write it, with the counted entries ``newer``
    (``counted``): each record replaces its key's in ``steps`` or is appended, ``stepsCompleted``
    counts the keys they complete, ``journalLsn`` and ``currentStep`` move on. What a reader shows
    between checkpoints (a key whose record is archived in a journal chunk is appended, and
    counted if it was not Completed in steps: a step run again after it failed)."""
    steps = [dict(r) for r in status.get("steps") or []]
    where = {r.get("key"): i for i, r in enumerate(steps)}
    completed = int(status.get("stepsCompleted") or 0)
    for entry in newer:
        rec = entry.record
        i = where.get(rec.get("key"))
        was = steps[i].get("state") if i is not None else None
        if i is None:
            where[rec.get("key")] = len(steps)
            steps.append(dict(rec))
        else:
            steps[i] = dict(rec)
        now = rec.get("state")
        completed += (now == "Completed") - (was == "Completed")
    out = {**status, "steps": steps, "stepsCompleted": max(completed, 0)}
    if newer:
        out["journalLsn"] = newer[-1].lsn
        out["currentStep"] = str(newer[-1].record.get("key"))
    return out
