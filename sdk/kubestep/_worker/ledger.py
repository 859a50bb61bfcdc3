"""A held run's step records, and what the server has of them: pure, no I/O, no clock.

The records are laid out as the server keeps them: the journal's (archived in ConfigMaps, a prefix),
then ``status.steps``. A key may appear more than once (a failed step run again after its record was
archived): its last record counts, and ``index`` finds it.

Every record put gets the run's next log sequence number (``lsn``, ``_protocol/batches.py``). With
the step journal on (``journaling``), records also queue in ``pending`` until the worker's group
commit makes them durable in a StepBatch; a status write that carries them makes that unneeded.

What was sent is tracked so that steps of one run running concurrently (``asyncio.gather``) never lose
a record: an append fixes what it sends when it is built (``append_ops``), and when it lands
(``written``) only that becomes clean; a record put while it was in flight stays unsent or dirty and goes
with the next write.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .. import _journal as journal
from .. import _protocol as api
from .._errors import ReplayMismatch
from .._protocol import batches
from .._protocol.replay import Replay

FINAL = frozenset({api.StepState.COMPLETED, api.StepState.FAILED, api.StepState.INTERRUPTED})  # never change

# status.steps' share of the object, in JSON bytes: past it the oldest final records are archived
# too, however few (a few large step outputs). etcd stores 1.5 MiB at most per object, and the
# apiserver's request to etcd of a JSON patch carries the old object and the new (2 MiB at most).
STATUS_STEP_BYTES = 256 * 1024

Sent = tuple[int, dict[int, int], int, int]  # (records up to, dirty sent with their versions, archived, lsn)


class Ledger:
    def __init__(self, status: dict[str, Any], window: int, journaling: bool = False) -> None:
        self.window = window  # records kept in status.steps (0: never archive)
        self.journaling = journaling
        self.pending: list[dict[str, Any]] = []  # [{lsn, record}] not yet in a StepBatch
        self.journal: list[dict[str, Any]] = list(status.get("journal") or [])
        self.consumed: list[str] = list(status.get("eventsConsumed") or [])  # events delivered to waits
        self.load([], status)

    def load(self, archived: list[dict[str, Any]], status: dict[str, Any], newer: Sequence[batches.Entry] = ()) -> None:
        """The whole history at a claim: the journal's records, then status.steps, then the StepBatch
        entries newer than status that count (``batches.counted``), as records not yet in status."""
        # Archived records (``archived`` of them, a prefix) are kept as their JSON text once archived
        # (``freeze``): they never change, and a str is one object the garbage collector does not
        # track, where a record's dicts are several it scans at every full collection (100,000
        # records: 55 MB and a 38 ms full collection as dicts, 24 MB and 4 ms as text). A long run's
        # history is most of what its worker holds. ``rec(i)`` reads either form.
        self.records: list[dict[str, Any] | str] = [*archived, *(dict(r) for r in status.get("steps") or [])]
        self._sizes: dict[int, int] = {}  # JSON bytes of records[i], computed when first needed
        self._prefix: list[int] = [0]  # _prefix[i]: the _size of records[:i], archived ones only
        self.index = {self.rec(i)["key"]: i for i in range(len(self.records))}
        self.completed = sum(1 for i in self.index.values() if self.rec(i)["state"] == api.StepState.COMPLETED)
        self.journal = list(status.get("journal") or [])
        self.consumed = list(status.get("eventsConsumed") or [])
        self.archived = len(archived)  # records in journal ConfigMaps
        self.server_archived = self.archived  # ... as status.journal on the server lists them
        self.flushed = len(self.records)  # records the server has, as a prefix
        # Indices below ``flushed`` replaced since, each with a version that every put increments, so that
        # a record replaced again while its replacement is in flight stays dirty.
        self.dirty: dict[int, int] = {}
        self.lsn = batches.journal_lsn(status)
        self.pending = []
        for entry in newer:
            self.put(entry.record, durable=False)
            self.lsn = max(self.lsn, entry.lsn)
            if entry.record.get("kind") == "Event" and entry.record.get("event"):
                if entry.record["event"] not in self.consumed:
                    self.consumed.append(entry.record["event"])
        # What the code must reach again before it starts a new step (the replay rule).
        self.replay = Replay(self.rec(i) for i in range(len(self.records)))
        self.freeze(0, self.archived)

    # ----- reading ----------------------------------------------------------------------------

    def lookup(self, key: str, kind: str, what: str = "") -> dict[str, Any] | None:
        """The record of ``key``, reached now by the code doing ``what``; None if the key is new.
        Raises ``ReplayMismatch`` on a breach of the replay rule (``_protocol/replay.py``)."""
        i = self.index.get(key)
        if i is None:
            return None
        rec = self.rec(i)
        self.replay.reach(key, kind, rec, what or f"reaches {key!r}")
        return rec

    def rec(self, i: int) -> dict[str, Any]:
        """Record ``i``, archived (its JSON text, decoded now: a copy) or not."""
        r = self.records[i]
        return json.loads(r) if isinstance(r, str) else r

    def archived_records(self, a: int, b: int) -> list[dict[str, Any]]:
        """Records ``a`` to ``b`` as dicts (a merge writes them again)."""
        return [self.rec(i) for i in range(a, b)]

    def freeze(self, a: int, b: int) -> None:
        """Records ``a`` to ``b``, archived now, kept as their JSON text from here on."""
        for i in range(a, min(b, self.archived)):
            r = self.records[i]
            if not isinstance(r, str):
                text = json.dumps(r, separators=(",", ":"))
                self._sizes[i] = len(text)
                self.records[i] = text

    @property
    def unreached(self) -> dict[str, dict[str, Any]]:
        return self.replay.unreached

    def first_unreached(self) -> dict[str, Any] | None:
        return self.replay.first_unreached()

    def mismatch(self, what: str) -> ReplayMismatch | None:
        return self.replay.mismatch(what)

    def completed_count(self, upto: int | None = None) -> int:
        """Keys whose last record among the first ``upto`` is Completed: the running count, less the
        few records not yet sent (kept incrementally: a long run must not rescan its history)."""
        unsent = range(len(self.records) if upto is None else upto, len(self.records))
        return self.completed - sum(
            1
            for i in unsent
            if self.index.get(self.rec(i)["key"]) == i and self.rec(i)["state"] == api.StepState.COMPLETED
        )

    def next_event(self, events: list[dict[str, Any]], topic: str) -> dict[str, Any] | None:
        """The oldest event of ``topic`` not yet delivered to a wait."""
        for event in events:
            if event.get("topic") == topic and event.get("name") not in self.consumed:
                return dict(event)
        return None

    # ----- recording --------------------------------------------------------------------------

    def put(self, rec: dict[str, Any], durable: bool = True) -> None:
        """Records ``rec`` (the last record of a key counts). ``durable``: give it the next lsn and,
        journaling, queue it for the group commit (records read back at a claim already are)."""
        if durable:
            self.lsn += 1
            if self.journaling:
                self.pending.append({"lsn": self.lsn, "record": rec})
        i = self.index.get(rec["key"])
        if i is not None and self.rec(i)["state"] == api.StepState.COMPLETED:
            self.completed -= 1
        if rec["state"] == api.StepState.COMPLETED:
            self.completed += 1
        if i is not None and i >= self.archived:
            self.records[i] = rec
            self._sizes.pop(i, None)
            self.dirty[i] = self.dirty.get(i, 0) + 1  # even if unflushed: an append of it may be in flight
            return
        # New, or its earlier record is archived (immutable): append; the last one counts.
        self.index[rec["key"]] = len(self.records)
        self.records.append(rec)

    # ----- what goes to the server ------------------------------------------------------------

    def take_pending(self) -> list[dict[str, Any]]:
        """The entries to commit now (``[{lsn, record}]``), taken."""
        out, self.pending = self.pending, []
        return out

    @property
    def unsent(self) -> bool:
        """Records the server's status does not have yet."""
        return self.flushed < len(self.records) or bool(self.dirty)

    def _journal_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"journalLsn": self.lsn, "journalFences": []}
        if self.records:
            fields["currentStep"] = self.rec(len(self.records) - 1)["key"][:1024]
        return fields

    def status_fields(self) -> dict[str, Any]:
        """Every record and count, for a write of the whole status (endings, waits, hand-backs)."""
        fields: dict[str, Any] = {
            "steps": self.records[self.archived :],
            "stepsCompleted": self.completed_count(),
            **self._journal_fields(),
        }
        if self.journal:
            fields["journal"] = self.journal
        if self.consumed:
            fields["eventsConsumed"] = list(self.consumed)
        return fields

    def append_ops(self, status: dict[str, Any]) -> tuple[list[dict[str, Any]], Sent]:
        """JSON-patch operations that bring the server's ``status`` up to date by appending (the request
        stays small however long the history), and what they send, fixed now."""
        upto, dirty, archived, lsn = len(self.records), dict(self.dirty), self.archived, self.lsn
        ops: list[dict[str, Any]] = []
        if "steps" not in status or archived != self.server_archived:
            # First records, or some just archived: status.steps anew, with the journal.
            ops.append({"op": "add", "path": "/status/steps", "value": self.records[archived:upto]})
            if self.journal:
                ops.append({"op": "add", "path": "/status/journal", "value": self.journal})
        else:
            ops += [
                {"op": "replace", "path": f"/status/steps/{i - archived}", "value": self.records[i]}
                for i in sorted(dirty)
                if i < self.flushed
            ]
            ops += [{"op": "add", "path": "/status/steps/-", "value": rec} for rec in self.records[self.flushed : upto]]
        ops.append({"op": "add", "path": "/status/stepsCompleted", "value": self.completed_count(upto)})
        ops += [{"op": "add", "path": f"/status/{k}", "value": v} for k, v in self._journal_fields().items()]
        if self.consumed and list(status.get("eventsConsumed") or []) != self.consumed:
            ops.append({"op": "add", "path": "/status/eventsConsumed", "value": list(self.consumed)})
        return ops, (upto, dirty, archived, lsn)

    def written(self, sent: Sent | None = None) -> None:
        """The server now has what ``sent`` describes (everything, by default): what was sent is clean;
        a record put while the write was in flight stays unsent (index ≥ upto) or dirty."""
        if sent is None:
            self.flushed, self.dirty, self.server_archived = len(self.records), {}, self.archived
            self.pending = []  # status has them all: no batch needs to
            return
        upto, dirty, archived, lsn = sent
        self.flushed, self.server_archived = upto, archived
        self.pending = [e for e in self.pending if e["lsn"] > lsn]
        for i, version in dirty.items():
            if self.dirty.get(i) == version:  # not replaced again since it was sent
                del self.dirty[i]

    # ----- archiving --------------------------------------------------------------------------

    def _size(self, i: int) -> int:
        size = self._sizes.get(i)
        if size is None:
            r = self.records[i]
            size = self._sizes[i] = len(r) if isinstance(r, str) else journal.record_bytes(r)
        return size

    def _archived_bytes(self, a: int, b: int) -> int:
        """The ``_size`` of archived records ``a`` to ``b``, from prefix sums: archived records never
        change (``put`` appends a key's newer record), so the sums are computed once per record."""
        prefix = self._prefix
        while len(prefix) <= b:
            prefix.append(prefix[-1] + self._size(len(prefix) - 1))
        return prefix[b] - prefix[a]

    def to_archive(self, max_bytes: int = STATUS_STEP_BYTES) -> tuple[int, int] | None:
        """The oldest final records to move into the journal once status holds more than ``window``
        records or ``max_bytes`` of them (down to half of either), as (start, end), or None."""
        if self.window <= 0:
            return None
        size = sum(self._size(i) for i in range(self.archived, len(self.records)))
        if len(self.records) - self.archived <= self.window and size <= max_bytes:
            return None
        end, i = len(self.records) - self.window // 2, self.archived
        while i < len(self.records) and self.rec(i)["state"] in FINAL and (i < end or size > max_bytes // 2):
            size -= self._size(i)
            i += 1
        return (self.archived, i) if i > self.archived else None

    def merge_span(self, refs: list[dict[str, Any]]) -> tuple[int, int, int, int, int] | None:
        """If ``refs`` call for a merge: (first ref, end ref, level, first record, end record) of the
        oldest run of chunks (``journal.merge_candidates``) that it pays to write as fewer
        (``journal.worthwhile``; a quick test of their bytes first, so that a long run's full chunks,
        which never merge, cost little to pass over at every archive)."""
        starts = [0]
        for r in refs:
            starts.append(starts[-1] + r["steps"])
        most = (journal.FANOUT // 2) * journal.CHUNK_BYTES
        for first, end, level in journal.merge_candidates(refs):
            a, b = starts[first], starts[end]
            if self._archived_bytes(a, b) > most:
                continue
            if journal.worthwhile(end - first, (self._size(i) for i in range(a, b))):
                return first, end, level, a, b
        return None
