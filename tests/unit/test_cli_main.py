"""The ``kubestep`` command as a whole, without a cluster: one dispatch convention, plain-text help,
the ``-o name`` round trip, a closed pipe, Ctrl-C, and ``kubestep worker`` given a module that
cannot be imported or a file instead of a module name."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kubestep import Execution
from kubestep._cli import build_parser, run
from kubestep._cli.commands import UsageError, run_name
from kubestep._cli.render import print_executions
from kubestep._worker.cli import import_workflows, module_of

ROOT = Path(__file__).resolve().parents[2]


def _kubestep(*args: str, cwd: Path | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubestep._cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": ""},
        **kw,  # type: ignore[call-overload]
    )


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


# ----- one dispatch convention, plain help --------------------------------------------------------


def test_every_command_sets_func_and_nothing_else() -> None:
    commands = _subcommands(build_parser())
    assert {"run", "cancel", "get", "describe", "steps", "watch", "send-event", "completion"} <= set(commands)
    assert {"worker", "operator"} <= set(commands)  # by entry point
    for name, parser in commands.items():
        assert callable(parser.get_default("func")), name
        assert parser.get_default("afunc") is None, name


def test_help_is_plain_text() -> None:
    parser = build_parser()
    helps = [parser.format_help()] + [p.format_help() for p in _subcommands(parser).values()]
    for text in helps:
        assert "``" not in text and ":func:" not in text and ":class:" not in text, text
    assert "exit codes:" in helps[0] and "4    a run named on the command line does not exist" in helps[0]


def test_kubestep_help_as_a_process() -> None:
    out = _kubestep("--help")
    assert out.returncode == 0 and "``" not in out.stdout and "Durable Python workflows" in out.stdout, out


# ----- -o name round trip -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    [
        "etl-1",
        "workflowexecution.kubestep.io/etl-1",
        "workflowexecutions.kubestep.io/etl-1",
        "workflowexecution.v1alpha1.kubestep.io/etl-1",
        "wfx/etl-1",
        "workflowexecution/etl-1",
        "WorkflowExecution/etl-1",
    ],
)
def test_a_run_is_named_as_kubectl_names_it(given: str) -> None:
    assert run_name(given) == "etl-1"


@pytest.mark.parametrize("given", ["pod/etl-1", "wfx/", "wfx/a/b", "workflowexecution.example.com/etl-1"])
def test_what_is_not_a_run_is_refused(given: str) -> None:
    with pytest.raises(UsageError, match="is not a run"):
        run_name(given)


def test_get_o_name_output_names_the_run_back(capsys: pytest.CaptureFixture[str]) -> None:
    execution = Execution.from_object({"metadata": {"name": "etl-1", "namespace": "a"}, "spec": {"workflow": "etl"}})
    print_executions("name", [execution], "a")
    (line,) = capsys.readouterr().out.splitlines()
    assert line == "workflowexecution.kubestep.io/etl-1" and run_name(line) == "etl-1"


def test_a_wrong_name_is_a_usage_error_before_any_cluster_is_asked() -> None:
    out = _kubestep("describe", "pod/x", "--kubeconfig", "/nonexistent")
    assert out.returncode == 2, out
    assert (
        out.stderr
        == "kubestep describe: error: 'pod/x' is not a run: give NAME, wfx/NAME or workflowexecution.kubestep.io/NAME\n"
    )


# ----- a closed pipe, Ctrl-C ----------------------------------------------------------------------


def test_ctrl_c_is_exit_130_without_a_word(capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    assert run(argparse.Namespace(func=interrupted)) == 130
    assert capsys.readouterr() == ("", "")


# ----- kubestep worker ----------------------------------------------------------------------------


def test_a_module_that_does_not_exist_is_one_line_and_exit_2(tmp_path: Path) -> None:
    out = _kubestep("worker", "no.such.module", cwd=tmp_path)
    assert out.returncode == 2, out
    assert out.stderr == "kubestep worker: cannot import no.such.module: No module named 'no'\n"


def test_a_missing_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    out = _kubestep("worker", "myflows.py", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr == "kubestep worker: cannot import myflows.py: no such file\n", out


@pytest.mark.parametrize("given", ["myflows.py", "sub/dir/myflows.py"])
def test_a_file_is_imported_from_where_it_lies(tmp_path: Path, given: str) -> None:
    """The file declares no workflow, so the worker stops right after importing it: no cluster is asked."""
    path = tmp_path / given
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("print('imported', __name__)\n")
    out = _kubestep("worker", given, cwd=tmp_path)
    assert out.stdout == "imported myflows\n", out
    assert out.returncode == 1 and out.stderr == "kubestep worker: module 'myflows' declares no @workflow\n", out


def test_a_file_or_package_names_its_module(tmp_path: Path) -> None:
    (tmp_path / "flows.py").write_text("")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    assert module_of(str(tmp_path / "flows.py")) == ("flows", str(tmp_path))
    assert module_of(str(tmp_path / "pkg")) == ("pkg", str(tmp_path))
    assert module_of("team.flows") == ("team.flows", None)
    (tmp_path / "not-a-name.py").write_text("")
    with pytest.raises(ValueError, match="not a valid module name"):
        module_of(str(tmp_path / "not-a-name.py"))
    with pytest.raises(ValueError, match="not a module name"):
        module_of("flows:main")


def test_a_file_named_like_a_module_already_imported_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "json.py").write_text("")
    assert import_workflows(str(tmp_path / "json.py")) is None
    assert "a module named json is already imported" in capsys.readouterr().err


def test_a_dependency_missing_from_the_module_keeps_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the module asked for is said in one line; the module's own failing import says where."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    name = f"flows_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text("import no_such_dependency_of_the_flows\n")
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_of_the_flows"):
        import_workflows(str(tmp_path / f"{name}.py"))


def test_concurrency_below_one_is_a_usage_error() -> None:
    out = _kubestep("worker", "m", "--concurrency", "0")
    assert out.returncode == 2 and "--concurrency: must be at least 1" in out.stderr, out


# ----- the README's SDK sample closes its client ------------------------------------------------------


def test_the_readme_sample_closes_its_client() -> None:
    readme = (ROOT / "README.md").read_text()
    sample = re.search(r"```python\n(.*?)```", readme, re.S)
    assert sample is not None
    code = textwrap.dedent(sample.group(1))
    assert "async with KubestepClient(" in code and not re.search(r"^\s*client = KubestepClient\(", code, re.M)
