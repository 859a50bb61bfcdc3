"""The `kubestep` command loads with only the base dependencies (the image has the operator extra
and not the dev one): building the image found `kubestep --help` failing on `import httpx`. The
image also leaves the dev tooling (`kubestep_dev`) out, though its entry point stays registered."""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

BLOCK = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # as if not installed: importing it raises ImportError
from kubestep._cli import build_parser
parser = build_parser()
parser.parse_args(["worker", "my.module"])
print("ok")
"""

# The image: the `kubestep` command, its `--help`, with the `dev` entry point registered and no package
# (the Dockerfile deletes it from site-packages after the install): importing it fails as it does there.
IMAGE = """
import sys


class Absent:
    def find_spec(self, name, path=None, target=None):
        if name == "kubestep_dev":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, Absent())
sys.argv = ["kubestep", "--help"]
from kubestep._cli import main
main()
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def _loads_without(*blocked: str) -> subprocess.CompletedProcess[str]:
    return _run(BLOCK.format(blocked=list(blocked)))


def _commands() -> set[str]:
    from kubestep._cli import build_parser

    (sub,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_the_cli_loads_without_the_dev_extra() -> None:
    proc = _loads_without("httpx", "cryptography")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_the_cli_loads_without_any_extra() -> None:
    proc = _loads_without("httpx", "cryptography", "kopf")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_the_cli_loads_without_the_dev_tooling() -> None:
    proc = _loads_without("kubestep_dev", "httpx", "cryptography")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_dev_and_operator_arrive_by_entry_point() -> None:
    assert {"dev", "operator", "server", "worker"} <= _commands()


def test_the_image_without_the_dev_tooling_has_no_dev_command_and_still_helps() -> None:
    proc = _run(IMAGE)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    usage = proc.stdout[proc.stdout.index("{") + 1 : proc.stdout.index("}")]
    commands = {c.strip() for c in usage.split(",")}
    assert {"operator", "worker", "run"} <= commands and "dev" not in commands, proc.stdout


def _commands_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> set[str]:
    import kubestep._cli

    (tmp_path / "brokencmd.py").write_text("import kubestep_not_installed_either\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = importlib.metadata.EntryPoint(name="extra", value=value, group="kubestep.commands")
    monkeypatch.setattr(kubestep._cli.importlib.metadata, "entry_points", lambda group: [entry])
    return _commands()


def test_a_command_whose_package_is_absent_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "extra" not in _commands_with(tmp_path, monkeypatch, "kubestep_not_installed.cli:add_parser")


def test_a_command_missing_what_it_imports_fails_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModuleNotFoundError, match="kubestep_not_installed_either"):
        _commands_with(tmp_path, monkeypatch, "brokencmd:add_parser")


DEV_UP = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None
sys.argv = ["kubestep", "dev", "up", "--state-dir", {state!r}]
from kubestep._cli import main
main()
"""


@pytest.mark.parametrize("blocked", [["httpx", "cryptography"], ["cryptography"]])
def test_dev_up_without_the_dev_extra_names_it(
    blocked: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubestep_dev.controlplane import BINARIES

    bin_dir = tmp_path / "bin"  # stand-ins: `up` looks for the binaries before it makes certificates
    bin_dir.mkdir()
    for name in BINARIES:
        (bin_dir / name).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("KUBESTEP_BIN_DIR", str(bin_dir))
    proc = _run(DEV_UP.format(blocked=blocked, state=str(tmp_path / "state")))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "pip install 'kubestep[dev]'" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
