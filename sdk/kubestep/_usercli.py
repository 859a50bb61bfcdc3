"""The commands people type: ``kubestep run | cancel | get | describe | steps | watch | completion``.

They drive the same SDK as code does (``KubestepClient``, field manager ``kubestep-cli``, so a cancel
records who asked), read kubeconfig like kubectl (``--kubeconfig``, ``--context``, ``-n``), and print
tables for people or ``-o json|yaml`` for scripts. Each handler returns the process's exit code.

Every string a person reads passes through :func:`safe`: runs, Events and errors carry text that
anyone with write access to a run chose (a cancel reason, step keys, error messages), and raw it could
move the cursor, clear lines or forge a line of output. ``-o json|yaml`` is left to the serializers,
which escape control characters themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import unicodedata
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import yaml

from . import _protocol as api
from ._client import KubestepClient
from ._errors import ApiError, ExecutionNotFoundError, KubestepError, ResultTimeoutError

if TYPE_CHECKING:
    from rich.text import Text

FIELD_MANAGER = "kubestep-cli"
EXIT_BY_PHASE: dict[str, int] = {api.Phase.COMPLETED: 0, api.Phase.FAILED: 1, api.Phase.CANCELLED: 2}

Handler = Callable[[argparse.Namespace], Awaitable[int]]

# Shown escaped besides every control character (C0, DEL, C1: Unicode category Cc): the line and
# paragraph separators, which some terminals break lines on, and the bidirectional formatting
# characters, which reorder what is displayed ("Trojan Source").
_ALSO_ESCAPED = frozenset("\u2028\u2029\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def safe(value: object) -> str:
    """``value`` as text that is safe to print on a terminal: control characters (``\\n``, ``\\r``,
    ESC, the other C0 and C1 controls, DEL), line separators, bidirectional overrides and lone
    surrogates appear as visible escapes (``\\n``, ``\\x1b``, ``\\u202e``) instead of acting. For
    plain ``print``; where ``rich`` renders, use :func:`_text`, which also keeps ``[markup]`` literal."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():  # the common case: nothing to escape (isprintable is False for every one of them)
        return text
    out = []
    for ch in text:
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif unicodedata.category(ch) in ("Cc", "Cs") or ch in _ALSO_ESCAPED:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _text(value: object, style: str = "") -> Text:
    """``value`` for ``rich``: escaped by :func:`safe`, as a ``Text``, which is never parsed as markup."""
    from rich.text import Text

    return Text(safe(value), style=style)


def add_user_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    conn.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    conn.add_argument("--context", help="kubeconfig context")
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("-o", "--output", choices=["table", "wide", "json", "yaml", "name"], default="table")

    p = sub.add_parser("run", parents=[conn, out], help="start a run of a workflow")
    p.add_argument("workflow")
    p.add_argument("--input", default=None, help="the input, as JSON (default: null)")
    p.add_argument("--timeout", type=int, help="runTimeoutSeconds: budget of continuous running time")
    p.add_argument("--queue-timeout", type=int, help="queueTimeoutSeconds: cancel if no worker claims it in time")
    p.add_argument("--grace", type=int, help="cancelGracePeriodSeconds for a step in flight after a stop")
    p.add_argument("--queue", help="only workers started with this queue may run it")
    p.add_argument("--name", help="the run's name (default: generated from the workflow)")
    p.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--wait", action="store_true", help="wait for the end; exit 0 Completed, 1 Failed, 2 Cancelled")
    p.add_argument("--wait-timeout", type=float, help="with --wait: give up after this many seconds (exit 3)")
    p.set_defaults(afunc=_run)

    p = sub.add_parser("cancel", parents=[conn, out], help="cancel runs by name, by label or all of them")
    p.add_argument("names", nargs="*")
    p.add_argument("-l", "--selector", help="label selector, e.g. kubestep.io/workflow=etl")
    p.add_argument("--all", action="store_true", help="every unfinished run in the namespace")
    p.add_argument("--reason", help="recorded with the cancel (status.cancellation.message)")
    p.add_argument("--grace", type=int, help="shorten the grace period of the step in flight (0: stop now)")
    p.set_defaults(afunc=_cancel)

    p = sub.add_parser("get", parents=[conn, out], help="list runs (like kubectl get wfx)")
    p.add_argument("names", nargs="*")
    p.add_argument("-l", "--selector")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.set_defaults(afunc=_get)

    p = sub.add_parser("describe", parents=[conn], help="a run's state, why it stopped, its steps and Events")
    p.add_argument("name")
    p.set_defaults(afunc=_describe)

    p = sub.add_parser("steps", parents=[conn, out], help="a run's whole step history, journal included")
    p.add_argument("name")
    p.set_defaults(afunc=_steps)

    p = sub.add_parser("watch", parents=[conn], help="follow a run's steps live until it ends")
    p.add_argument("name")
    p.add_argument("--timeout", type=float, help="stop watching after this many seconds (exit 3)")
    p.set_defaults(afunc=_watch)

    p = sub.add_parser("send-event", parents=[conn], help="send an event to a run's wait_for_event")
    p.add_argument("name")
    p.add_argument("topic")
    p.add_argument("--data", default=None, help="the event's data, as JSON")
    p.add_argument("--event-name", help="a unique name (default: generated); resending it is refused")
    p.set_defaults(afunc=_send_event)

    p = sub.add_parser("completion", help="print a shell completion script: bash, zsh or tcsh")
    p.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    p.set_defaults(func=_completion)


def run_handler(args: argparse.Namespace) -> int:
    try:
        code: int = asyncio.run(args.afunc(args))
        return code
    except (KubestepError, ValueError) as e:
        print(f"error: {safe(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _client(args: argparse.Namespace) -> KubestepClient:
    return KubestepClient(args.namespace, kubeconfig=args.kubeconfig, context=args.context, field_manager=FIELD_MANAGER)


def _json_arg(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} is not valid JSON: {e}") from None


# ----- run / cancel / send-event ------------------------------------------------------------------


async def _run(args: argparse.Namespace) -> int:
    payload = _json_arg(args.input, "--input")
    labels = dict(kv.split("=", 1) for kv in args.label)
    async with _client(args) as client:
        handle = await client.start(
            args.workflow,
            payload,
            run_timeout_seconds=args.timeout,
            name=args.name,
            queue_timeout_seconds=args.queue_timeout,
            cancel_grace_period_seconds=args.grace,
            labels=labels,
            queue=args.queue,
        )
        if not args.wait:
            obj = await client._get_object(handle.id)
            _print_objects(args.output, [obj], client.namespace, single=True)
            return 0
        try:
            execution = await client.wait(handle.id, args.wait_timeout)
        except ResultTimeoutError as e:
            print(f"{safe(handle.id)}: {safe(e)}", file=sys.stderr)
            return 3
        obj = await client._get_object(handle.id)
        _print_objects(args.output, [obj], client.namespace, single=True)
        return EXIT_BY_PHASE.get(str(execution.status.phase), 1)


async def _cancel(args: argparse.Namespace) -> int:
    if bool(args.names) + bool(args.selector) + bool(args.all) != 1:
        raise ValueError("give run names, or -l SELECTOR, or --all (exactly one of them)")
    async with _client(args) as client:
        names = list(args.names)
        if not names:
            items = await _list(client, client.namespace, args.selector)
            names = [
                o["metadata"]["name"] for o in items if (o.get("status") or {}).get("phase") not in api.TERMINAL_PHASES
            ]
        results = []
        for name in names:
            try:
                before = await client._get_object(name)
            except ExecutionNotFoundError:
                results.append({"name": name, "cancelled": False, "result": "not found"})
                continue
            cancelled = await client.cancel_execution(name, args.reason, args.grace)
            phase = (before.get("status") or {}).get("phase")
            results.append(
                {
                    "name": name,
                    "cancelled": cancelled,
                    "result": "cancel requested" if cancelled else f"already {phase or 'gone'}",
                }
            )
    if args.output in ("json", "yaml"):
        _dump(args.output, results)
    else:
        for r in results:
            print(f"workflowexecution.kubestep.io/{safe(r['name'])}: {safe(r['result'])}")
    return 1 if any(r["result"] == "not found" for r in results) else 0


async def _send_event(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        name = await client.send_event(args.name, args.topic, _json_arg(args.data, "--data"), name=args.event_name)
    print(f"event {safe(name)} sent to {safe(args.name)}")
    return 0


# ----- get / describe / steps ---------------------------------------------------------------------


async def _list(client: KubestepClient, namespace: str | None, selector: str | None) -> list[dict[str, Any]]:
    path = api.execution_path(namespace) if namespace else f"/apis/{api.GROUP}/{api.VERSION}/{api.PLURAL}"
    listing = await client._kube.get(path, {"labelSelector": selector} if selector else None)
    return list(listing.get("items") or [])


async def _get(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        if args.names:
            objs = []
            for name in args.names:
                try:
                    objs.append(await client._get_object(name))
                except ExecutionNotFoundError as e:
                    print(f"error: {safe(e)}", file=sys.stderr)
                    return 1
        else:
            objs = await _list(client, None if args.all_namespaces else client.namespace, args.selector)
        _print_objects(
            args.output, objs, client.namespace, single=len(args.names) == 1, all_namespaces=args.all_namespaces
        )
    return 0


def _print_objects(
    output: str, objs: list[dict[str, Any]], namespace: str, *, single: bool = False, all_namespaces: bool = False
) -> None:
    if output in ("json", "yaml"):
        for o in objs:
            o.setdefault("apiVersion", api.API_VERSION)
            o.setdefault("kind", api.KIND)
        _dump(output, objs[0] if single and objs else {"apiVersion": "v1", "kind": "List", "items": objs})
        return
    if output == "name":
        for o in objs:
            print(f"workflowexecution.kubestep.io/{safe(o['metadata']['name'])}")
        return
    headers = (["NAMESPACE"] if all_namespaces else []) + [
        "NAME",
        "WORKFLOW",
        "PHASE",
        "REASON",
        "STEPS",
        "WORKER",
        "AGE",
    ]
    if output == "wide":
        headers += ["CANCELLED-BY", "MESSAGE"]
    rows = []
    for o in objs:
        meta, spec, status = o["metadata"], o.get("spec") or {}, o.get("status") or {}
        row = ([meta["namespace"]] if all_namespaces else []) + [
            meta["name"],
            spec.get("workflow", ""),
            status.get("phase") or "",
            status.get("reason") or "",
            str(status.get("stepsCompleted") or 0),
            status.get("worker") or "",
            _age(meta.get("creationTimestamp")),
        ]
        if output == "wide":
            c = status.get("cancellation") or {}
            row += [c.get("requestedByUser") or c.get("requestedBy") or "", (status.get("message") or "")[:80]]
        rows.append(row)
    if not rows:
        print(
            f"No runs found in {safe(namespace)} namespace." if not all_namespaces else "No runs found.",
            file=sys.stderr,
        )
        return
    _table(headers, rows)


def _table(headers: list[str], rows: list[list[str]]) -> None:
    """Prints aligned columns; every cell passes through :func:`safe`."""
    cells = [[safe(x) for x in line] for line in [headers, *rows]]
    widths = [max(len(x) for x in col) for col in zip(*cells, strict=True)]
    for line in cells:
        print("   ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())


def _dump(output: str, data: Any) -> None:
    if output == "json":
        print(json.dumps(data, indent=2, default=str))
    else:
        print(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), end="")


def _age(stamp: str | None) -> str:
    t = api.parse_time(stamp)
    if t is None:
        return ""
    return _duration((api.now() - t).total_seconds())


def _duration(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60}s" if s < 600 else f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60}m"
    return f"{s // 86400}d"


async def _describe(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        obj = await client._get_object(args.name)
        history = await client.step_history(args.name)
        events = (
            await client._kube.get(
                f"/api/v1/namespaces/{client.namespace}/events",
                {"fieldSelector": f"involvedObject.name={args.name},involvedObject.kind={api.KIND}"},
            )
        ).get("items") or []
    _print_description(obj, history, events)
    return 0


def _print_description(obj: dict[str, Any], history: list[Any], events: list[dict[str, Any]]) -> None:
    """``kubestep describe``: the run ``obj``, its step records (``StepRecord``) and its Events."""
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}

    def field(label: str, value: object) -> None:
        print(f"{label:<22}{safe(value)}")

    field("Name:", meta["name"])
    field("Namespace:", meta.get("namespace", ""))
    field("Workflow:", spec.get("workflow", ""))
    field("Phase:", f"{status.get('phase') or '-'}  ({status.get('reason') or '-'})")
    if status.get("message"):
        field("Message:", status["message"])
    limits = [
        f"runTimeoutSeconds={spec['runTimeoutSeconds']}" if spec.get("runTimeoutSeconds") else "",
        f"queueTimeoutSeconds={spec['queueTimeoutSeconds']}" if spec.get("queueTimeoutSeconds") else "",
        f"cancelGracePeriodSeconds={spec['cancelGracePeriodSeconds']}"
        if spec.get("cancelGracePeriodSeconds") is not None
        else "",
    ]
    field("Limits:", ", ".join(x for x in limits if x) or "none")
    for label, key in (
        ("Created:", None),
        ("Started:", "startedAt"),
        ("Queued:", "queuedAt"),
        ("Deadline:", "deadline"),
        ("Wakes:", "wakeAt"),
        ("Finished:", "finishedAt"),
    ):
        value = meta.get("creationTimestamp") if key is None else status.get(key)
        if value:
            field(label, value)
    if status.get("worker"):
        field("Worker:", f"{status['worker']} (attempt {status.get('attempt', 0)})")
    if status.get("waitingFor"):
        field("Waiting for:", json.dumps(status["waitingFor"]))
    c = status.get("cancellation")
    if c or spec.get("cancelRequested"):
        print("Cancellation:")
        c = c or {"reason": api.StopReason.REQUESTED, **api.cancel_note(obj)}
        for label, key in (
            ("Reason:", "reason"),
            ("Message:", "message"),
            ("Requested by:", "requestedBy"),
            ("Requested by user:", "requestedByUser"),
            ("Requested at:", "requestedAt"),
            ("Acknowledged by:", "acknowledgedBy"),
            ("Acknowledged at:", "acknowledgedAt"),
        ):
            if c.get(key):
                field(f"  {label}", c[key])
    if status.get("error"):
        field("Error:", f"{status['error'].get('type')}: {status['error'].get('message')}")
    print(f"Steps ({len(history)}):")
    if history:
        _table(
            ["  KEY", "KIND", "STATE", "DURATION", "NOTE"],
            [[f"  {s.key}", s.kind, s.state, _step_duration(s), _step_note(s)] for s in history],
        )
    print("Events:")
    if not events:
        print("  <none>")
    for ev in sorted(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or ""):
        when, kind, reason, message = (safe(ev.get(k) or "") for k in ("lastTimestamp", "type", "reason", "message"))
        component = safe((ev.get("source") or {}).get("component") or "")
        print(f"  {when}  {kind:<8} {reason:<16} {component}: {message}")


def _step_duration(s: Any) -> str:
    if s.started_at and s.finished_at:
        return f"{(s.finished_at - s.started_at).total_seconds():.2f}s"
    return ""


def _step_note(s: Any) -> str:
    notes = []
    if s.cleanup:
        notes.append("cleanup")
    if s.error:
        notes.append(f"{s.error.get('type')}: {s.error.get('message')}")
    if s.kind == "Event":
        notes.append(
            f"topic {s.topic}" + (f", event {s.event}" if s.event else "") + (", timed out" if s.timed_out else "")
        )
    if s.wake_at and s.state == "Waiting":
        notes.append(f"until {api.fmt_time(s.wake_at)}")
    return "; ".join(notes)[:100]


async def _steps(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        history = await client.step_history(args.name)
    if args.output in ("json", "yaml"):
        _dump(args.output, [s.model_dump(by_alias=True, exclude_none=True, mode="json") for s in history])
        return 0
    _table(
        ["KEY", "KIND", "STATE", "STARTED", "DURATION", "NOTE"],
        [
            [
                s.key,
                s.kind,
                s.state,
                api.fmt_time(s.started_at)[11:23] if s.started_at else "",
                _step_duration(s),
                _step_note(s),
            ]
            for s in history
        ],
    )
    return 0


# ----- watch --------------------------------------------------------------------------------------


async def _watch(args: argparse.Namespace) -> int:
    """Follows one run: a live display on a terminal, a line per change otherwise."""
    async with _client(args) as client:
        try:
            return await asyncio.wait_for(_follow(client, args.name), args.timeout)
        except TimeoutError:
            print(f"{safe(args.name)}: still running after {args.timeout:g} s", file=sys.stderr)
            return 3


async def _follow(client: KubestepClient, name: str) -> int:
    from rich.console import Console

    console = Console()
    live = console.is_terminal
    path = api.execution_path(client.namespace)
    params = {"fieldSelector": f"metadata.name={name}"}
    seen: dict[str, str] = {}
    started = dt.datetime.now(dt.UTC)
    display = _Display(console, name) if live else None
    try:
        if display is not None:
            display.start()
        while True:
            listing = await client._kube.get(path, params)
            items = listing.get("items") or []
            if not items:
                raise ExecutionNotFoundError(f"no execution {name!r} in namespace {client.namespace}")
            obj = items[0]
            rv = listing["metadata"]["resourceVersion"]
            while True:
                phase = _show(obj, seen, display, started)
                if phase in api.TERMINAL_PHASES:
                    return EXIT_BY_PHASE[phase]
                try:
                    async for event in client._kube.watch(path, rv, params):
                        if event.get("type") in ("ADDED", "MODIFIED"):
                            obj = event["object"]
                            rv = obj["metadata"]["resourceVersion"]
                            phase = _show(obj, seen, display, started)
                            if phase in api.TERMINAL_PHASES:
                                return EXIT_BY_PHASE[phase]
                        elif event.get("type") == "DELETED":
                            raise ExecutionNotFoundError(f"execution {name!r} was deleted")
                except ApiError:
                    break  # the watch expired: list again
    finally:
        if display is not None:
            display.stop()


def _show(obj: dict[str, Any], seen: dict[str, str], display: _Display | None, started: dt.datetime) -> str:
    status = obj.get("status") or {}
    phase = str(status.get("phase") or "")
    if display is not None:
        display.update(obj)
        return phase
    # Plain output: a line per step state and per phase change.
    for s in status.get("steps") or []:
        if seen.get(f"step:{s['key']}") != s["state"]:
            seen[f"step:{s['key']}"] = s["state"]
            print(f"step {safe(s['key']):<24} {safe(s['state'])}", flush=True)
    state = f"{phase} {status.get('reason') or ''}".strip()
    if seen.get("phase") != state:
        seen["phase"] = state
        print(
            f"run  {safe(obj['metadata']['name']):<24} {safe(state)}  {safe(status.get('message') or '')}".rstrip(),
            flush=True,
        )
    return phase


class _Display:
    """The live view: a header with the run's phase and timings, and a row per step."""

    def __init__(self, console: Any, name: str) -> None:
        from rich.live import Live

        self.name = name
        self.obj: dict[str, Any] = {}
        self.live = Live(console=console, refresh_per_second=8, get_renderable=self.render)

    def start(self) -> None:
        self.live.start()

    def stop(self) -> None:
        self.live.refresh()
        self.live.stop()

    def update(self, obj: dict[str, Any]) -> None:
        self.obj = obj

    def render(self) -> Any:
        from rich.console import Group
        from rich.spinner import Spinner
        from rich.table import Table

        # Every string from the run goes in as a Text made by _text: escaped, and never parsed as markup.

        status = self.obj.get("status") or {}
        spec = self.obj.get("spec") or {}
        phase = status.get("phase") or "Pending"
        colour = {"Completed": "green", "Failed": "red", "Cancelled": "yellow", "Cancelling": "yellow"}.get(
            phase, "cyan"
        )
        head = _text(self.name, "bold")
        head.append_text(_text(f"  {spec.get('workflow', '')}  "))
        head.append_text(_text(phase, f"bold {colour}"))
        head.append_text(_text(f"  {status.get('reason') or ''}  "))
        head.append_text(_text(status.get("message") or "", "dim"))
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for col in ("step", "state", "duration", "note"):
            table.add_column(col)
        for s in status.get("steps") or []:
            start, end = api.parse_time(s.get("startedAt")), api.parse_time(s.get("finishedAt"))
            took = f"{(end - start).total_seconds():.2f}s" if start and end else ""
            state_colour = {"Completed": "green", "Failed": "red", "Interrupted": "red", "Waiting": "cyan"}.get(
                s["state"], "white"
            )
            note = (s.get("error") or {}).get("message") or ("cleanup" if s.get("cleanup") else "")
            table.add_row(_text(s["key"]), _text(s["state"], state_colour), _text(took), _text(str(note)[:60]))
        parts: list[Any] = [head, table]
        if phase in (api.Phase.RUNNING, api.Phase.CANCELLING):
            done = status.get("stepsCompleted") or 0
            parts.append(Spinner("dots", text=_text(f" next step running on {status.get('worker')} ({done} done)")))
        elif phase in (api.Phase.QUEUED, api.Phase.WAITING):
            parts.append(_text(f"  {phase.lower()}…", "dim"))
        return Group(*parts)


# ----- completion ---------------------------------------------------------------------------------


def _completion(args: argparse.Namespace) -> int:
    import shtab

    from ._cli import build_parser

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0
