"""The `kubestep` command loads with only the base dependencies (the image has the operator extra
and not the dev one): building the image found `kubestep --help` failing on `import httpx`."""

from __future__ import annotations

import subprocess
import sys

BLOCK = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # as if not installed: importing it raises ImportError
from kubestep._cli import build_parser
parser = build_parser()
parser.parse_args(["worker", "my.module"])
print("ok")
"""


def _loads_without(*blocked: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK.format(blocked=list(blocked))], capture_output=True, text=True, timeout=60
    )


def test_the_cli_loads_without_the_dev_extra() -> None:
    proc = _loads_without("httpx", "cryptography")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_the_cli_loads_without_any_extra() -> None:
    proc = _loads_without("httpx", "cryptography", "kopf")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_every_lazy_name_of_the_dev_tooling_resolves() -> None:
    import kubestep._dev as dev

    assert sorted(dev.__all__) == sorted(dev._HOME)
    for name in dev.__all__:
        assert getattr(dev, name) is not None
