"""What the ``kubestep`` commands print: tables, ``describe``, the machine formats, and the live view
of ``watch``. Pure: every function takes the public models (``Execution``, ``StepRecord``,
``RunEvent``) and writes to stdout (notes to stderr); nothing here talks to the cluster.

Every string a person reads passes through :func:`safe`: runs, Events and errors carry text that
anyone with write access to a run chose (a cancel reason, step keys, error messages), and raw it could
move the cursor, clear lines or forge a line of output. ``-o json|yaml`` is left to the serializers,
which escape control characters themselves.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import yaml

from kubestep import Execution, RunEvent, StepRecord

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.text import Text

#: ``-o name`` prints runs as ``workflowexecution.kubestep.io/NAME``, which every command takes back.
NAME_PREFIX = "workflowexecution.kubestep.io/"

#: The operator gives every run it sees a phase (Queued) at once; a run still without one this long
#: after it was created has not been seen by any operator.
UNSEEN_AFTER_SECONDS = 10.0

# Shown escaped besides every control character (C0, DEL, C1: Unicode category Cc): the line and
# paragraph separators, which some terminals break lines on, and the bidirectional formatting
# characters, which reorder what is displayed ("Trojan Source").
_ALSO_ESCAPED = frozenset("\u2028\u2029\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def safe(value: object) -> str:
    """``value`` as text that is safe to print on a terminal: control characters (``\\n``, ``\\r``,
    ESC, the other C0 and C1 controls, DEL), line separators, bidirectional overrides and lone
    surrogates appear as visible escapes (``\\n``, ``\\x1b``, ``\\u202e``) instead of acting. For
    plain ``print``; where ``rich`` renders, use :func:`text`, which also keeps ``[markup]`` literal."""
    s = value if isinstance(value, str) else str(value)
    if s.isprintable():  # the common case: nothing to escape (isprintable is False for every one of them)
        return s
    out = []
    for ch in s:
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif unicodedata.category(ch) in ("Cc", "Cs") or ch in _ALSO_ESCAPED:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def text(value: object, style: str = "") -> Text:
    """``value`` for ``rich``: escaped by :func:`safe`, as a ``Text``, which is never parsed as markup."""
    from rich.text import Text

    return Text(safe(value), style=style)


def note(message: str) -> None:
    """A line for the person, on stderr (stdout stays what was asked for)."""
    print(safe(message), file=sys.stderr, flush=True)


# ----- time ---------------------------------------------------------------------------------------


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def when(t: dt.datetime | None) -> str:
    """A time as RFC 3339 in UTC, to the millisecond where it has a fraction."""
    if t is None:
        return ""
    t = t.astimezone(dt.UTC)
    return f"{t:%Y-%m-%dT%H:%M:%S}" + (f".{t.microsecond // 1000:03d}" if t.microsecond else "") + "Z"


def duration(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60}s" if s < 600 else f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60}m"
    return f"{s // 86400}d"


def age(t: dt.datetime | None, at: dt.datetime) -> str:
    return "" if t is None else duration((at - t).total_seconds())


# ----- runs no operator has seen ------------------------------------------------------------------


def unseen(execution: Execution, at: dt.datetime) -> bool:
    """No operator has seen the run: it has no phase ``UNSEEN_AFTER_SECONDS`` after it was created."""
    created = execution.created_at
    return (
        execution.status.phase is None
        and created is not None
        and (at - created).total_seconds() >= UNSEEN_AFTER_SECONDS
    )


def unseen_message(namespace: str) -> str:
    return f"no operator has seen this run (is one watching namespace {namespace}?)"


def seconds_until_unseen(execution: Execution, at: dt.datetime) -> float | None:
    """How long until :func:`unseen` could first say so of a run without a phase; None if it has one."""
    if execution.status.phase is not None or execution.created_at is None:
        return None
    return max(0.0, UNSEEN_AFTER_SECONDS - (at - execution.created_at).total_seconds())


# ----- get, and the machine formats ---------------------------------------------------------------


def dump(output: str, data: Any) -> None:
    if output == "json":
        print(json.dumps(data, indent=2, default=str))
    else:
        print(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), end="")


def table(headers: list[str], rows: Iterable[list[str]]) -> None:
    """Prints aligned columns; every cell passes through :func:`safe`."""
    cells = [[safe(x) for x in line] for line in [headers, *rows]]
    widths = [max(len(x) for x in col) for col in zip(*cells, strict=True)]
    for line in cells:
        print("   ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())


def print_executions(
    output: str,
    executions: Sequence[Execution],
    namespace: str,
    *,
    single: bool = False,
    all_namespaces: bool = False,
    at: dt.datetime | None = None,
) -> None:
    """``kubestep get``: ``table``, ``wide`` (who cancelled, the message), ``name``
    (``workflowexecution.kubestep.io/NAME``), or the objects as ``json``/``yaml`` (one object when
    ``single``, else a ``List``). Runs no operator has seen are named on stderr."""
    at = at or now()
    if output in ("json", "yaml"):
        objs = [e.raw for e in executions]
        dump(output, objs[0] if single and objs else {"apiVersion": "v1", "kind": "List", "items": objs})
    elif output == "name":
        for e in executions:
            print(f"{NAME_PREFIX}{safe(e.id)}")
    elif not executions:
        note(f"No runs found in {namespace} namespace." if not all_namespaces else "No runs found.")
    else:
        headers = ["NAMESPACE"] if all_namespaces else []
        headers += ["NAME", "WORKFLOW", "PHASE", "REASON", "STEPS", "WORKER", "AGE"]
        if output == "wide":
            headers += ["CANCELLED-BY", "MESSAGE"]
        rows = []
        for e in executions:
            s = e.status
            row = [e.namespace] if all_namespaces else []
            row += [e.id, e.workflow, s.phase or "", s.reason or "", str(s.steps_completed), s.worker or ""]
            row.append(age(e.created_at, at))
            if output == "wide":
                c = e.cancellation
                by = (c.requested_by_user or c.requested_by or "") if c is not None else ""
                message = s.message or (unseen_message(e.namespace) if unseen(e, at) else "")
                row += [by, message[:80]]
            rows.append(row)
        table(headers, rows)
    blind = [e for e in executions if unseen(e, at)]
    for ns in sorted({e.namespace for e in blind}):
        names = ", ".join(e.id for e in blind if e.namespace == ns)
        note(f"no operator has seen {names} (is one watching namespace {ns}?)")


# ----- describe and steps -------------------------------------------------------------------------


def describe(
    execution: Execution,
    history: Sequence[StepRecord],
    events: Sequence[RunEvent],
    at: dt.datetime | None = None,
    children: Sequence[Execution] = (),
) -> None:
    """``kubestep describe``: the run, its place in its tree, its step records, its child runs and
    its Events."""
    at = at or now()
    e, status = execution, execution.status

    def field(label: str, value: object) -> None:
        print(f"{label:<22}{safe(value)}")

    field("Name:", e.id)
    field("Namespace:", e.namespace)
    field("Workflow:", e.workflow)
    if e.queue:
        field("Queue:", e.queue)
    if e.parent:
        field("Parent:", f"{e.parent} (root {e.root or '?'}, depth {e.depth})")
    field("Phase:", f"{status.phase or '-'}  ({status.reason or '-'})")
    if unseen(e, at):
        field("Note:", unseen_message(e.namespace))
    if status.message:
        field("Message:", status.message)
    limits = [
        f"runTimeoutSeconds={e.run_timeout_seconds}" if e.run_timeout_seconds else "",
        f"queueTimeoutSeconds={e.queue_timeout_seconds}" if e.queue_timeout_seconds else "",
        f"cancelGracePeriodSeconds={e.cancel_grace_period_seconds}"
        if e.cancel_grace_period_seconds is not None
        else "",
    ]
    field("Limits:", ", ".join(x for x in limits if x) or "none")
    for label, t in (
        ("Created:", e.created_at),
        ("Started:", status.started_at),
        ("Queued:", status.queued_at),
        ("Deadline:", status.deadline),
        ("Wakes:", status.wake_at),
        ("Finished:", status.finished_at),
    ):
        if t is not None:
            field(label, when(t))
    if status.worker:
        field("Worker:", f"{status.worker} (attempt {status.attempt})")
    if status.waiting_for:
        field("Waiting for:", json.dumps(status.waiting_for))
    c = e.cancellation
    if c is not None:
        print("Cancellation:")
        for label, value in (
            ("Reason:", c.reason),
            ("Message:", c.message),
            ("Requested by:", c.requested_by),
            ("Requested by user:", c.requested_by_user),
            ("Requested at:", when(c.requested_at)),
            ("Acknowledged by:", c.acknowledged_by),
            ("Acknowledged at:", when(c.acknowledged_at)),
        ):
            if value:
                field(f"  {label}", value)
    if status.error:
        err = status.error
        field(
            "Error:", f"{err.get('type')}: {err.get('message')}" + (f" (step {err['step']})" if err.get("step") else "")
        )
        if err.get("traceback"):
            # A line each, behind a bar: the exception's message is in it, and whoever chose that text
            # could otherwise write lines that pass for describe's own.
            print("Traceback:")
            for line in str(err["traceback"]).rstrip("\n").split("\n"):
                print(f"  | {safe(line)}")
    print(f"Steps ({len(history)}):")
    if history:
        table(
            ["  KEY", "KIND", "STATE", "DURATION", "NOTE"],
            [[f"  {s.key}", s.kind, s.state, step_duration(s), step_note(s)] for s in history],
        )
    if children:
        print(f"Children ({len(children)}):")
        table(
            ["  NAME", "WORKFLOW", "PHASE", "REASON"],
            [[f"  {c.id}", c.workflow, c.status.phase or "-", c.status.reason or "-"] for c in children],
        )
    print("Events:")
    if not events:
        print("  <none>")
    for ev in events:
        count = f" (x{ev.count})" if ev.count > 1 else ""
        print(
            f"  {when(ev.last_seen or ev.first_seen)}  {safe(ev.type):<8} {safe(ev.reason):<16} "
            f"{safe(ev.component)}: {safe(ev.message)}{count}"
        )


def step_duration(s: StepRecord) -> str:
    if s.started_at and s.finished_at:
        return f"{(s.finished_at - s.started_at).total_seconds():.2f}s"
    return ""


def step_note(s: StepRecord) -> str:
    notes = []
    if s.cleanup:
        notes.append("cleanup")
    if s.error:
        notes.append(f"{s.error.get('type')}: {s.error.get('message')}")
    if s.kind == "Event":
        notes.append(
            f"topic {s.topic}" + (f", event {s.event}" if s.event else "") + (", timed out" if s.timed_out else "")
        )
    if s.attempt is not None:
        notes.append(f"attempt {s.attempt}" + (f", next at {when(s.retry_at)}" if s.retry_at else ""))
    if s.wake_at and s.state == "Waiting":
        notes.append(f"until {when(s.wake_at)}")
    return "; ".join(notes)[:100]


def print_steps(output: str, history: Sequence[StepRecord]) -> None:
    if output in ("json", "yaml"):
        dump(output, [s.model_dump(by_alias=True, exclude_none=True, mode="json") for s in history])
        return
    table(
        ["KEY", "KIND", "STATE", "STARTED", "DURATION", "NOTE"],
        [[s.key, s.kind, s.state, when(s.started_at)[11:23], step_duration(s), step_note(s)] for s in history],
    )


# ----- watch --------------------------------------------------------------------------------------


class LineView:
    """``watch`` without a terminal: a line per step state and per phase change."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def __enter__(self) -> LineView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def show(self, execution: Execution) -> None:
        status = execution.status
        for s in status.steps:
            if self.seen.get(f"step:{s.key}") != s.state:
                self.seen[f"step:{s.key}"] = s.state
                print(f"step {safe(s.key):<24} {safe(s.state)}", flush=True)
        state = f"{status.phase or ''} {status.reason or ''}".strip()
        if self.seen.get("phase") != state:
            self.seen["phase"] = state
            print(f"run  {safe(execution.id):<24} {safe(state)}  {safe(status.message or '')}".rstrip(), flush=True)

    def warn(self, message: str) -> None:
        note(message)


class QuietView(LineView):
    """``run --wait``: shows nothing while it waits, only warnings."""

    def show(self, execution: Execution) -> None:
        pass


class LiveView:
    """``watch`` on a terminal: a header with the run's phase, and a row per step, redrawn in place."""

    def __init__(self, console: Console, name: str) -> None:
        from rich.live import Live as RichLive

        self.name = name
        self.execution: Execution | None = None
        self.warning = ""
        self.live: Live = RichLive(console=console, refresh_per_second=8, get_renderable=self.render)

    def __enter__(self) -> LiveView:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.refresh()
        self.live.stop()

    def show(self, execution: Execution) -> None:
        self.execution = execution
        if execution.status.phase is not None:
            self.warning = ""

    def warn(self, message: str) -> None:
        self.warning = message

    def render(self) -> RenderableType:
        from rich.console import Group
        from rich.spinner import Spinner
        from rich.table import Table

        # Every string from the run goes in as a Text made by text(): escaped, and never parsed as markup.
        e = self.execution
        status = e.status if e is not None else None
        phase = (status.phase if status else None) or "Pending"
        colour = {"Completed": "green", "Failed": "red", "Cancelled": "yellow", "Cancelling": "yellow"}.get(
            phase, "cyan"
        )
        head = text(self.name, "bold")
        head.append_text(text(f"  {e.workflow if e else ''}  "))
        head.append_text(text(phase, f"bold {colour}"))
        head.append_text(text(f"  {(status.reason if status else None) or ''}  "))
        head.append_text(text((status.message if status else None) or "", "dim"))
        grid = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for col in ("step", "state", "duration", "note"):
            grid.add_column(col)
        for s in status.steps if status else []:
            state_colour = {"Completed": "green", "Failed": "red", "Interrupted": "red", "Waiting": "cyan"}.get(
                s.state, "white"
            )
            remark = (s.error or {}).get("message") or ("cleanup" if s.cleanup else "")
            grid.add_row(text(s.key), text(s.state, state_colour), text(step_duration(s)), text(str(remark)[:60]))
        parts: list[RenderableType] = [head, grid]
        if self.warning:
            parts.append(text(f"  {self.warning}", "bold yellow"))
        elif status is not None and phase in ("Running", "Cancelling"):
            done = status.steps_completed
            parts.append(Spinner("dots", text=text(f" next step running on {status.worker} ({done} done)")))
        elif phase in ("Queued", "Waiting"):
            parts.append(text(f"  {phase.lower()}…", "dim"))
        return Group(*parts)
