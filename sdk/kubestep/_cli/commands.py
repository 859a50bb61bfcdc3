"""The commands people type: ``kubestep run | cancel | get | describe | steps | watch | send-event``.

They drive the public SDK as code does (``KubestepClient``, field manager ``kubestep-cli``, so a
cancel records who asked), read kubeconfig like kubectl (``--kubeconfig``, ``--context``, ``-n``),
and print tables for people or ``-o json|yaml`` for scripts (``render``). Every command's handler is
``func(args) -> int``, the process's exit code; the asynchronous ones are wrapped once by
:func:`command`. The exit codes (docs/cli.md):

| code | meaning |
|---|---|
| 0 | done; for ``watch`` and ``run --wait``: the run Completed |
| 1 | an error (the apiserver refused, ``cancel`` matched nothing, ``send-event`` to a finished run); for ``watch`` and ``run --wait``: the run Failed |
| 2 | usage: the command line is wrong (argparse's code) |
| 3 | ``watch`` and ``run --wait``: the run was Cancelled |
| 4 | a run named on the command line does not exist (or was deleted while watched) |
| 5 | ``watch --timeout`` or ``run --wait-timeout`` passed with the run still going |
| 130 | interrupted (Ctrl-C) |
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from kubestep import (
    Execution,
    ExecutionNotFoundError,
    KubestepClient,
    KubestepError,
)

from . import render
from .render import safe

FIELD_MANAGER = "kubestep-cli"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 3
EXIT_NOT_FOUND = 4
EXIT_STILL_RUNNING = 5
EXIT_INTERRUPTED = 130
#: ``watch`` and ``run --wait``: the run's outcome.
EXIT_BY_PHASE: dict[str, int] = {"Completed": EXIT_OK, "Failed": EXIT_ERROR, "Cancelled": EXIT_CANCELLED}

Handler = Callable[[argparse.Namespace], int]
AsyncHandler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

# What kubectl accepts before the slash for a WorkflowExecution (`kubectl get wfx/x`): the resource,
# singular, plural or short, alone or with its group (and version).
_RESOURCES = {"workflowexecution", "workflowexecutions", "wfx"}
_GROUPS = {"", "kubestep.io", "v1alpha1.kubestep.io"}


class UsageError(Exception):
    """The command line is wrong: said as ``kubestep CMD: error: …``, exit 2 (as argparse does)."""


def command(handler: AsyncHandler) -> Handler:
    """``handler`` as a command's ``func``: run to completion in its own event loop, with
    :class:`UsageError` (2), a missing run (4) and every other ``KubestepError`` (1) said in one line."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(handler(args))
        except UsageError as e:
            print(f"kubestep {args.command}: error: {safe(e)}", file=sys.stderr)
            return EXIT_USAGE
        except ExecutionNotFoundError as e:
            print(f"error: {safe(e)}", file=sys.stderr)
            return EXIT_NOT_FOUND
        except (KubestepError, ValueError) as e:
            print(f"error: {safe(e)}", file=sys.stderr)
            return EXIT_ERROR

    return run


def run_name(text: str) -> str:
    """A run's name as given: ``NAME``, or as kubectl and ``get -o name`` write it
    (``workflowexecution.kubestep.io/NAME``, ``workflowexecutions.kubestep.io/NAME``, ``wfx/NAME``,
    ``workflowexecution/NAME``)."""
    if "/" not in text:
        return text
    resource, _, name = text.partition("/")
    kind, _, group = resource.lower().partition(".")
    if kind in _RESOURCES and group in _GROUPS and name and "/" not in name:
        return name
    raise UsageError(f"{text!r} is not a run: give NAME, wfx/NAME or {render.NAME_PREFIX}NAME")


def _json_arg(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{what} is not valid JSON: {e}") from None


def _labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise UsageError(f"-l {pair!r}: give KEY=VALUE")
        labels[key] = value
    return labels


def _connect(args: argparse.Namespace) -> KubestepClient:
    return KubestepClient(args.namespace, kubeconfig=args.kubeconfig, context=args.context, field_manager=FIELD_MANAGER)


# ----- the parsers --------------------------------------------------------------------------------


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    conn.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    conn.add_argument("--context", help="kubeconfig context")
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("-o", "--output", choices=["table", "wide", "json", "yaml", "name"], default="table")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    name_help = f"the run: NAME, or as `get -o name` prints it ({render.NAME_PREFIX}NAME, wfx/NAME)"

    p = sub.add_parser("run", parents=[conn, out], help="start a run of a workflow")
    p.add_argument("workflow")
    p.add_argument("--input", default=None, help="the input, as JSON (default: null)")
    p.add_argument("--timeout", type=int, help="runTimeoutSeconds: budget of continuous running time")
    p.add_argument("--queue-timeout", type=int, help="queueTimeoutSeconds: cancel if no worker claims it in time")
    p.add_argument("--grace", type=int, help="cancelGracePeriodSeconds for a step in flight after a stop")
    p.add_argument("--queue", help="only workers started with this queue may run it")
    p.add_argument(
        "--ttl",
        type=int,
        help="ttlSecondsAfterFinished: delete the run this long after it ends (default: the install's)",
    )
    p.add_argument("--name", help="the run's name (default: generated from the workflow)")
    p.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--wait", action="store_true", help="wait for the end; exit 0 Completed, 1 Failed, 2 Cancelled")
    p.add_argument("--wait-timeout", type=float, help="with --wait: give up after this many seconds (exit 3)")
    p.set_defaults(func=command(_run))

    p = sub.add_parser("cancel", parents=[conn, data], help="cancel runs by name, by label or all of them")
    p.add_argument("names", nargs="*", metavar="NAME", help=name_help)
    p.add_argument("-l", "--selector", help="label selector, e.g. kubestep.io/workflow=etl")
    p.add_argument("--all", action="store_true", help="every unfinished run in the namespace")
    p.add_argument("--reason", help="recorded with the cancel (status.cancellation.message)")
    p.add_argument("--grace", type=int, help="shorten the grace period of the step in flight (0: stop now)")
    p.set_defaults(func=command(_cancel))

    p = sub.add_parser("get", parents=[conn, out], help="list runs (like kubectl get wfx)")
    p.add_argument("names", nargs="*", metavar="NAME", help=name_help)
    p.add_argument("-l", "--selector")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.set_defaults(func=command(_get))

    p = sub.add_parser("describe", parents=[conn], help="a run's state, why it stopped, its steps and Events")
    p.add_argument("name", metavar="NAME", help=name_help)
    p.set_defaults(func=command(_describe))

    p = sub.add_parser("steps", parents=[conn, data], help="a run's whole step history, journal included")
    p.add_argument("name", metavar="NAME", help=name_help)
    p.set_defaults(func=command(_steps))

    p = sub.add_parser("watch", parents=[conn], help="follow a run's steps live until it ends")
    p.add_argument("name", metavar="NAME", help=name_help)
    p.add_argument("--timeout", type=float, help="stop watching after this many seconds (exit 3)")
    p.set_defaults(func=command(_watch))

    p = sub.add_parser("send-event", parents=[conn], help="send an event to a run's wait_for_event")
    p.add_argument("name", metavar="NAME", help=name_help)
    p.add_argument("topic")
    p.add_argument("--data", default=None, help="the event's data, as JSON")
    p.add_argument("--event-name", help="a unique name (default: generated); resending it is refused")
    p.set_defaults(func=command(_send_event))


# ----- run / cancel / send-event ------------------------------------------------------------------


async def _run(args: argparse.Namespace) -> int:
    payload = _json_arg(args.input, "--input")
    labels = _labels(args.label)
    async with _connect(args) as client:
        handle = await client.start(
            args.workflow,
            payload,
            run_timeout_seconds=args.timeout,
            name=args.name,
            queue_timeout_seconds=args.queue_timeout,
            cancel_grace_period_seconds=args.grace,
            labels=labels,
            queue=args.queue,
            ttl_seconds_after_finished=args.ttl,
        )
        if not args.wait:
            render.print_executions(args.output, [await client.get_execution(handle.id)], client.namespace, single=True)
            return EXIT_OK
        try:
            execution = await follow(client, handle.id, render.QuietView(), args.wait_timeout)
        except TimeoutError:
            render.note(f"{handle.id}: still running after {args.wait_timeout:g} s")
            return EXIT_STILL_RUNNING
        render.print_executions(args.output, [execution], client.namespace, single=True)
        return EXIT_BY_PHASE.get(str(execution.status.phase), EXIT_ERROR)


async def _cancel(args: argparse.Namespace) -> int:
    names = [run_name(n) for n in args.names]
    if bool(names) + bool(args.selector) + bool(args.all) != 1:
        raise UsageError("give run names, or -l SELECTOR, or --all (exactly one of them)")
    async with _connect(args) as client:
        namespace = client.namespace
        if not names:
            names = [e.id async for e in client.iter_executions(label_selector=args.selector) if not e.finished]
            if not names:
                what = f"-l {args.selector}" if args.selector else "--all"
                render.note(f"No runs matched {what} in namespace {namespace} (finished runs are left alone).")
                return EXIT_ERROR
        results = [await _cancel_one(client, name, args.reason, args.grace) for name in names]
    if args.output in ("json", "yaml"):
        render.dump(args.output, results)
    else:
        for r in results:
            line = f"{render.NAME_PREFIX}{safe(r['name'])}: {safe(r['result'])}"
            print(line + (f", but {safe(r['warning'])}" if r.get("warning") else ""))
    return EXIT_NOT_FOUND if any(r["result"] == "not found" for r in results) else EXIT_OK


async def _cancel_one(client: KubestepClient, name: str, reason: str | None, grace: int | None) -> dict[str, Any]:
    result: dict[str, Any] = {"name": name, "namespace": client.namespace, "cancelled": False}
    try:
        before = await client.get_execution(name)
        if before.finished:
            return {**result, "result": f"already {before.status.phase}"}
        if await client.cancel_execution(name, reason, grace):
            result.update(cancelled=True, result="cancel requested")
            if render.unseen(before, render.now()):
                result["warning"] = render.unseen_message(client.namespace)
            return result
        after = await client.get_execution(name)  # it ended meanwhile
        return {**result, "result": f"already {after.status.phase}"}
    except ExecutionNotFoundError:
        return {**result, "result": "not found"}


async def _send_event(args: argparse.Namespace) -> int:
    name = run_name(args.name)
    data = _json_arg(args.data, "--data")
    async with _connect(args) as client:
        execution = await client.get_execution(name)
        if execution.finished:
            render.note(f"error: {name} is {execution.status.phase}: no step will ever wait for this event; not sent")
            return EXIT_ERROR
        sent = await client.send_event(name, args.topic, data, name=args.event_name)
    print(f"event {safe(sent)} sent to {safe(name)}")
    if render.unseen(execution, render.now()):
        render.note(render.unseen_message(execution.namespace))
    return EXIT_OK


# ----- get / describe / steps ---------------------------------------------------------------------


async def _get(args: argparse.Namespace) -> int:
    names = [run_name(n) for n in args.names]
    missing = False
    async with _connect(args) as client:
        if names:
            executions = []
            for name in names:
                try:
                    executions.append(await client.get_execution(name))
                except ExecutionNotFoundError as e:
                    render.note(f"error: {e}")
                    missing = True
        else:
            executions = [
                e
                async for e in client.iter_executions(label_selector=args.selector, all_namespaces=args.all_namespaces)
            ]
        if executions or not names:
            render.print_executions(
                args.output,
                executions,
                client.namespace,
                single=len(names) == 1,
                all_namespaces=args.all_namespaces,
            )
    return EXIT_NOT_FOUND if missing else EXIT_OK


async def _describe(args: argparse.Namespace) -> int:
    name = run_name(args.name)
    async with _connect(args) as client:
        execution = await client.get_execution(name)
        history = await client.step_history(name)
        events = await client.events(name)
        children = await client.children(name)
    render.describe(execution, history, events, children=children)
    return EXIT_OK


async def _steps(args: argparse.Namespace) -> int:
    name = run_name(args.name)
    async with _connect(args) as client:
        history = await client.step_history(name)
    render.print_steps(args.output, history)
    return EXIT_OK


# ----- watch --------------------------------------------------------------------------------------


class View(Protocol):
    def show(self, execution: Execution) -> None: ...

    def warn(self, message: str) -> None: ...


async def _watch(args: argparse.Namespace) -> int:
    """Follows one run: a live display on a terminal, a line per change otherwise."""
    from rich.console import Console

    name = run_name(args.name)
    console = Console()
    view = render.LiveView(console, name) if console.is_terminal else render.LineView()
    async with _connect(args) as client:
        try:
            with view:
                execution = await follow(client, name, view, args.timeout)
        except TimeoutError:
            render.note(f"{name}: still running after {args.timeout:g} s")
            return EXIT_STILL_RUNNING
    return EXIT_BY_PHASE.get(str(execution.status.phase), EXIT_ERROR)


async def follow(client: KubestepClient, name: str, view: View, timeout: float | None) -> Execution:
    """Shows every state of the run until it finishes, and returns the last. Says once when no
    operator has seen the run. Raises ``TimeoutError`` after ``timeout`` seconds, and
    ``ExecutionNotFoundError`` if there is no such run or it is deleted."""
    latest: Execution | None = None
    warner: asyncio.Task[None] | None = None

    async def warn_later(delay: float) -> None:
        await asyncio.sleep(delay)
        if latest is not None and latest.status.phase is None:
            view.warn(render.unseen_message(latest.namespace))

    try:
        async with asyncio.timeout(timeout), contextlib.aclosing(client.watch_execution(name)) as states:
            async for execution in states:
                latest = execution
                view.show(execution)
                if execution.finished:
                    return execution
                delay = render.seconds_until_unseen(execution, render.now())
                if warner is None and delay is not None:
                    warner = asyncio.create_task(warn_later(delay))
    finally:
        if warner is not None:
            warner.cancel()
    raise KubestepError(f"the watch of {name} ended before the run did")
