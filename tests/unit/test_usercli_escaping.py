"""The ``kubestep`` commands print what others wrote (a cancel reason, step keys, error and Event
messages) escaped: a newline or an ANSI sequence in a run must not forge or erase a line of output,
and a ``[markup]`` must not style the live view. Pure: the renderers are called on dicts."""

from __future__ import annotations

import argparse
import io
import json
import unicodedata
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from kubestep import Execution, KubestepError, RunEvent, StepRecord
from kubestep._cli import commands, render
from kubestep._cli.render import safe

FORGED = "\n  Requested by user: system:admin\x1b[2K"
BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def _unsafe(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in BIDI


# ----- the helper ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", "plain", "a b  c", "ünïcödé ✓ 日本語 🚀", r"C:\path\n literal backslashes", "[bold red]x[/]", "50%"],
)
def test_safe_leaves_printable_text_alone(text: str) -> None:
    assert safe(text) == text


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("a\nb", r"a\nb"),
        ("a\r\nb", r"a\r\nb"),
        ("a\tb", r"a\tb"),
        ("\x1b[2K\x1b]0;title\x07", r"\x1b[2K\x1b]0;title\x07"),
        ("nul\x00", r"nul\x00"),
        ("del\x7f", r"del\x7f"),
        ("\x9b2J csi, \x85 nel, \x90 dcs", r"\x9b2J csi, \x85 nel, \x90 dcs"),  # C1 controls
        ("line\u2028para\u2029", r"line\u2028para\u2029"),
        ("abc\u202edcba\u2066", r"abc\u202edcba\u2066"),  # bidirectional overrides
        ("lone \ud800 surrogate", r"lone \ud800 surrogate"),
    ],
)
def test_safe_escapes_control_characters_visibly(text: str, shown: str) -> None:
    assert safe(text) == shown


def test_safe_takes_any_value() -> None:
    assert safe(42) == "42"
    assert safe(None) == "None"
    assert safe(KubestepError("bad\x1b[31m\nthing")) == r"bad\x1b[31m\nthing"


@given(st.text())
def test_safe_output_never_holds_a_control_character(text: str) -> None:
    shown = safe(text)
    assert not any(_unsafe(ch) for ch in shown), repr(shown)
    assert len(shown.splitlines()) <= 1
    assert safe(shown) == shown  # escaping is done once: the result is already safe


# ----- describe -----------------------------------------------------------------------------------


def _run(**status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubestep.io/v1alpha1",
        "kind": "WorkflowExecution",
        "metadata": {"name": "etl-1", "namespace": "team-a", "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {"workflow": "etl", "cancelRequested": True, "cancelReason": "by spec" + FORGED},
        "status": status,
    }


def _describe(capsys: pytest.CaptureFixture[str], obj: dict[str, Any], history: Any = (), events: Any = ()) -> str:
    render.describe(Execution.from_object(obj), list(history), [RunEvent.from_object(e) for e in events])
    out = capsys.readouterr().out
    return out


def _assert_nothing_forged(out: str) -> None:
    assert "\x1b" not in out and "\r" not in out, repr(out)
    assert not any(_unsafe(ch) for ch in out.replace("\n", "")), repr(out)
    for line in out.splitlines():
        assert "system:admin" not in line or not line.lstrip().startswith("Requested by user:"), line
        assert not line.lstrip().startswith(("Hacked", "Injected")), line


def test_describe_escapes_a_forged_line_in_the_cancel_reason(capsys: pytest.CaptureFixture[str]) -> None:
    obj = _run(
        phase="Cancelled",
        reason="Requested",
        message="Cancelled: by status" + FORGED,
        cancellation={
            "reason": "Requested",
            "message": "please stop" + FORGED,
            "requestedBy": "kubectl-patch",
            "requestedByUser": "alice",
            "requestedAt": "2025-01-01T00:00:01Z",
        },
    )
    out = _describe(capsys, obj)
    _assert_nothing_forged(out)
    lines = out.splitlines()
    # The one real "Requested by user:" line names alice; the forged text stays inside the Message line.
    assert [x for x in lines if x.lstrip().startswith("Requested by user:")] == [
        "  Requested by user:  alice",
    ]
    assert r"  Message:            please stop\n  Requested by user: system:admin\x1b[2K" in lines
    assert r"Message:              Cancelled: by status\n  Requested by user: system:admin\x1b[2K" in lines


def test_describe_escapes_the_cancel_reason_read_from_the_spec(capsys: pytest.CaptureFixture[str]) -> None:
    """Before the operator has written status.cancellation, describe reads spec.cancelReason."""
    obj = _run(phase="Running")
    # The field manager is the client's own word, and so is the annotation without the admission policy.
    obj["metadata"]["managedFields"] = [
        {
            "manager": "kubectl\n  Acknowledged by: x\x1b[1A",
            "operation": "Update",
            "time": "2025-01-01T00:00:01Z",
            "fieldsV1": {"f:spec": {"f:cancelRequested": {}}},
        }
    ]
    obj["metadata"]["annotations"] = {"kubestep.io/cancel-requested-by": "mallory\n  Acknowledged by: y\x1b[1A"}
    out = _describe(capsys, obj)
    _assert_nothing_forged(out)
    assert r"by spec\n  Requested by user: system:admin\x1b[2K" in out
    assert r"  Requested by:       kubectl\n  Acknowledged by: x\x1b[1A" in out.splitlines()
    assert not any(line.lstrip().startswith("Acknowledged by:") for line in out.splitlines()), out


def test_describe_escapes_steps_errors_and_events(capsys: pytest.CaptureFixture[str]) -> None:
    obj = _run(
        phase="Failed",
        reason="WorkflowError\x1b[32m",
        worker="w\x1b]8;;http://evil\x07link",
        error={
            "type": "ValueError\n",
            "message": "boom\nHacked: yes\x1b[2K",
            "traceback": 'Traceback (most recent call last):\n  File "x"\nHacked: traceback\x1b[2K\n',
        },
        waitingFor={"key": "k\n", "topic": "t\x1b"},
    )
    obj["spec"]["workflow"] = "etl\x1b[8m"
    history = [
        StepRecord.model_validate(
            {
                "key": "fetch\nInjected step line\x1b[1A",
                "kind": "Run",
                "state": "Failed",
                "error": {"type": "Oops\r", "message": "bad\x1b[2K\nHacked: too"},
            }
        ),
        StepRecord.model_validate(
            {"key": "approve", "kind": "Event", "state": "Completed", "topic": "t\n\x9b", "event": "e\u202e"}
        ),
    ]
    events = [
        {
            "lastTimestamp": "2025-01-01T00:00:02Z",
            "type": "Warning",
            "reason": "Failed\n",
            "source": {"component": "kubestep\x1b[0m"},
            "message": "step failed\nHacked: event\x1b[2K",
        }
    ]
    out = _describe(capsys, obj, history, events)
    _assert_nothing_forged(out)
    assert r"fetch\nInjected step line\x1b[1A" in out
    assert r"step failed\nHacked: event\x1b[2K" in out
    assert r"Oops\r: bad\x1b[2K\nHacked: too" in out
    assert r"topic t\n\x9b, event e\u202e" in out
    assert "  | Hacked: traceback\\x1b[2K" in out.splitlines()  # each line of the traceback, behind a bar


# ----- get, watch, cancel, errors -------------------------------------------------------------------


def test_get_tables_escape_every_cell(capsys: pytest.CaptureFixture[str]) -> None:
    obj = _run(
        phase="Cancelled",
        reason="Requested\x1b[2K",
        worker="w\nHacked: worker",
        message="stopped\nHacked: message",
        cancellation={"requestedByUser": "alice\x1b[8m", "message": "x"},
    )
    for output in ("table", "wide", "name"):
        render.print_executions(output, [Execution.from_object(obj)], "team-a", all_namespaces=True)
        out = capsys.readouterr().out
        _assert_nothing_forged(out)
        assert len(out.splitlines()) == (1 if output == "name" else 2), out
    render.print_executions("wide", [Execution.from_object(obj)], "team-a")
    out = capsys.readouterr().out
    assert r"alice\x1b[8m" in out and r"stopped\nHacked: message" in out


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_machine_output_is_left_to_the_serializer(capsys: pytest.CaptureFixture[str], output: str) -> None:
    obj = _run(phase="Cancelled", cancellation={"message": "please stop" + FORGED})
    render.print_executions(output, [Execution.from_object(obj)], "team-a", single=True)
    out = capsys.readouterr().out
    assert "\x1b" not in out
    parsed = json.loads(out) if output == "json" else yaml.safe_load(out)
    assert parsed["status"]["cancellation"]["message"] == "please stop" + FORGED  # the data, unchanged


def test_watch_lines_escape_step_keys_and_messages(capsys: pytest.CaptureFixture[str]) -> None:
    obj = _run(
        phase="Running",
        message="going\nHacked: run line\x1b[2K",
        steps=[{"key": "a\nHacked: step\x1b[1A", "kind": "Run", "state": "Running"}],
    )
    render.LineView().show(Execution.from_object(obj))
    out = capsys.readouterr().out
    _assert_nothing_forged(out)
    assert len(out.splitlines()) == 2, out


def test_the_live_view_neither_runs_escapes_nor_reads_markup() -> None:
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=300, color_system=None, force_terminal=False)
    display = render.LiveView(console, "etl-1[/bold]")
    display.show(
        Execution.from_object(
            _run(
                phase="Running",
                worker="[link=http://evil]w[/link]",
                message="[blink]m[/blink]\x1b[2K\nHacked: yes",
                steps=[
                    {
                        "key": "[red]key[/red]\x1b[1A",
                        "kind": "Run",
                        "state": "Failed",
                        "error": {"message": "[bold]boom[/bold]\nHacked: too"},
                    }
                ],
            )
        )
    )
    console.print(display.render())
    out = buffer.getvalue()
    _assert_nothing_forged(out)
    for literal in ("etl-1[/bold]", "[link=http://evil]w[/link]", "[blink]m[/blink]", "[red]key[/red]", "[bold]boom"):
        assert literal in out, out


def test_cancel_results_and_errors_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    async def fails(args: argparse.Namespace) -> int:
        raise KubestepError("no execution 'x\nHacked: error\x1b[2K'")

    assert commands.command(fails)(argparse.Namespace(command="cancel")) == 1
    err = capsys.readouterr().err
    _assert_nothing_forged(err)
    assert err == "error: no execution 'x\\nHacked: error\\x1b[2K'\n"
