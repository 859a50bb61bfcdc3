"""The ``kubestep`` commands' decisions, against a stand-in for ``KubestepClient`` (the same public
methods, answering from memory): exit codes, a cancel that matched nothing, an event for a finished
run, a run no operator has seen, ``describe``'s traceback. The same against the real control plane:
``tests/test_cli.py``."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kubestep import Execution, ExecutionNotFoundError, RunEvent, StepRecord
from kubestep._cli import build_parser, commands, render

NOW = dt.datetime.now(dt.UTC)


def _run(name: str, phase: str | None = None, *, age: float = 60, **status: Any) -> Execution:
    created = NOW - dt.timedelta(seconds=age)
    return Execution.from_object(
        {
            "metadata": {
                "name": name,
                "namespace": "team-a",
                "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            "spec": {"workflow": "etl"},
            "status": {**({"phase": phase} if phase else {}), **status},
        }
    )


class FakeClient:
    """The public methods of ``KubestepClient`` the commands use, on a dict of runs."""

    def __init__(self, *runs: Execution, states: list[Execution] | None = None) -> None:
        self.namespace = "team-a"
        self.runs = {r.id: r for r in runs}
        self.states = states or []
        self.cancelled: list[str] = []
        self.sent: list[tuple[str, str]] = []

    async def __aenter__(self) -> FakeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def get_execution(self, name: str) -> Execution:
        if name not in self.runs:
            raise ExecutionNotFoundError(f"no execution {name!r} in namespace {self.namespace}")
        return self.runs[name]

    async def iter_executions(self, **kw: Any) -> AsyncIterator[Execution]:
        for r in self.runs.values():
            yield r

    async def cancel_execution(self, name: str, reason: str | None = None, grace: int | None = None) -> bool:
        self.cancelled.append(name)
        return not self.runs[name].finished

    async def send_event(self, run: str, topic: str, data: Any = None, *, name: str | None = None) -> str:
        self.sent.append((run, topic))
        return f"{topic}-1"

    async def step_history(self, name: str) -> list[StepRecord]:
        await self.get_execution(name)
        return []

    async def events(self, name: str) -> list[RunEvent]:
        await self.get_execution(name)
        return []

    async def watch_execution(self, name: str) -> AsyncIterator[Execution]:
        await self.get_execution(name)
        for state in self.states:
            yield state


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    fake = FakeClient()
    monkeypatch.setattr(commands, "_connect", lambda args: fake)
    return fake


def _cmd(*argv: str) -> int:
    args = build_parser().parse_args(list(argv))
    code: int = args.func(args)
    return code


# ----- exit codes ---------------------------------------------------------------------------------


def test_the_wrapper_says_each_error_in_one_line_with_its_code(capsys: pytest.CaptureFixture[str]) -> None:
    async def usage(args: argparse.Namespace) -> int:
        raise commands.UsageError("give a name")

    async def missing(args: argparse.Namespace) -> int:
        raise ExecutionNotFoundError("no execution 'x' in namespace a")

    ns = argparse.Namespace(command="watch")
    assert commands.command(usage)(ns) == 2
    assert commands.command(missing)(ns) == 4
    assert capsys.readouterr().err == ("kubestep watch: error: give a name\nerror: no execution 'x' in namespace a\n")


@pytest.mark.parametrize(("phase", "code"), [("Completed", 0), ("Failed", 1), ("Cancelled", 3)])
def test_watch_exits_with_the_runs_outcome(client: FakeClient, phase: str, code: int) -> None:
    client.runs["x"] = _run("x", phase)
    client.states = [_run("x", "Running"), _run("x", phase)]
    assert _cmd("watch", "wfx/x") == code


def test_watch_of_a_missing_run_is_not_found_not_failed(client: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cmd("watch", "missing") == commands.EXIT_NOT_FOUND != commands.EXIT_BY_PHASE["Failed"]
    assert capsys.readouterr().err == "error: no execution 'missing' in namespace team-a\n"


def test_a_missing_run_is_exit_4_for_every_command_that_names_one(client: FakeClient) -> None:
    for argv in (["describe", "x"], ["steps", "x"], ["get", "x"], ["send-event", "x", "t"], ["cancel", "x"]):
        assert _cmd(*argv) == 4, argv


def test_bad_json_is_a_usage_error(client: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cmd("run", "etl", "--input", "{not json") == 2
    assert capsys.readouterr().err.startswith("kubestep run: error: --input is not valid JSON")


# ----- cancel -------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", [["-l", "team=data"], ["--all"]])
def test_a_cancel_that_matches_nothing_says_so_and_fails(
    client: FakeClient, capsys: pytest.CaptureFixture[str], how: list[str]
) -> None:
    client.runs["done"] = _run("done", "Completed")  # finished runs are left alone
    assert _cmd("cancel", *how) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"No runs matched {' '.join(how)} in namespace team-a"), err
    assert client.cancelled == []


def test_cancel_json_is_one_document_with_an_object_per_run(
    client: FakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    client.runs.update(a=_run("a", "Running"), b=_run("b", "Completed"))
    assert _cmd("cancel", "a", "workflowexecution.kubestep.io/b", "c", "-o", "json") == 4
    results = json.loads(capsys.readouterr().out)
    assert results == [
        {"name": "a", "namespace": "team-a", "cancelled": True, "result": "cancel requested"},
        {"name": "b", "namespace": "team-a", "cancelled": False, "result": "already Completed"},
        {"name": "c", "namespace": "team-a", "cancelled": False, "result": "not found"},
    ]
    assert client.cancelled == ["a"]  # a finished run is not patched


def test_a_cancel_of_a_run_no_operator_has_seen_says_so(client: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    client.runs["x"] = _run("x", None, age=60)
    assert _cmd("cancel", "x") == 0
    assert capsys.readouterr().out == (
        "workflowexecution.kubestep.io/x: cancel requested, but no operator has seen this run "
        "(is one watching namespace team-a?)\n"
    )


# ----- send-event ---------------------------------------------------------------------------------


def test_an_event_for_a_finished_run_is_refused(client: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    client.runs["x"] = _run("x", "Completed")
    assert _cmd("send-event", "x", "approved") == 1
    assert client.sent == []
    assert "x is Completed: no step will ever wait for this event; not sent" in capsys.readouterr().err


def test_an_event_for_a_running_run_is_sent(client: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    client.runs["x"] = _run("x", "Waiting")
    assert _cmd("send-event", "wfx/x", "approved") == 0
    assert client.sent == [("x", "approved")] and capsys.readouterr().out == "event approved-1 sent to x\n"


# ----- a run no operator has seen -----------------------------------------------------------------


def test_a_run_without_a_phase_is_unseen_only_after_a_while() -> None:
    assert render.unseen(_run("x", None, age=60), NOW)
    assert not render.unseen(_run("x", None, age=0), NOW)
    assert not render.unseen(_run("x", "Queued", age=60), NOW)


def test_get_and_describe_say_no_operator_has_seen_it(capsys: pytest.CaptureFixture[str]) -> None:
    blind = _run("x", None, age=60)
    render.print_executions("table", [blind, _run("y", "Queued")], "team-a", at=NOW)
    assert capsys.readouterr().err == "no operator has seen x (is one watching namespace team-a?)\n"
    render.describe(blind, [], [], at=NOW)
    out = capsys.readouterr().out
    assert "Note:                 no operator has seen this run (is one watching namespace team-a?)" in out


async def test_watch_warns_once_when_no_operator_has_seen_the_run() -> None:
    warned = asyncio.Event()

    class View:
        def __init__(self) -> None:
            self.warnings: list[str] = []
            self.shown: list[str | None] = []

        def show(self, execution: Execution) -> None:
            self.shown.append(execution.status.phase)

        def warn(self, message: str) -> None:
            self.warnings.append(message)
            warned.set()

    class Client(FakeClient):
        async def watch_execution(self, name: str) -> AsyncIterator[Execution]:
            yield _run("x", None, age=60)
            await warned.wait()  # the operator starts only after the warning
            yield _run("x", "Queued")
            yield _run("x", "Completed")

    view = View()
    last = await commands.follow(Client(), "x", view, None)
    assert last.status.phase == "Completed" and view.shown == [None, "Queued", "Completed"]
    assert view.warnings == ["no operator has seen this run (is one watching namespace team-a?)"]


# ----- describe -----------------------------------------------------------------------------------


def test_describe_shows_the_traceback_of_a_failed_run(capsys: pytest.CaptureFixture[str]) -> None:
    tb = 'Traceback (most recent call last):\n  File "flows.py", line 3, in etl\nValueError: bad day\n'
    failed = _run(
        "x", "Failed", reason="WorkflowError", error={"type": "ValueError", "message": "bad day", "traceback": tb}
    )
    render.describe(failed, [], [], at=NOW)
    out = capsys.readouterr().out.splitlines()
    start = out.index("Traceback:")
    assert out[start + 1 : start + 4] == [
        "  | Traceback (most recent call last):",
        '  |   File "flows.py", line 3, in etl',
        "  | ValueError: bad day",
    ]
    assert "Error:                ValueError: bad day" in out
