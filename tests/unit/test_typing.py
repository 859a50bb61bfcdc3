"""The four packages type-check under mypy --strict (configured in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_strict() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "sdk/kubestep",
            "operator/kubestep_operator",
            "server/kubestep_server",
            "dev/kubestep_dev",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
