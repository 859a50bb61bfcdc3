"""Where the local control plane keeps things: the cache, state and CRD directories, the binaries."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import MissingBinaryError


def cache_dir() -> Path:
    """`${KUBESTEP_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/kubestep}` (as build.sh)."""
    explicit = os.environ.get("KUBESTEP_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "kubestep"


def default_state_dir() -> Path:
    """`$KUBESTEP_DEV_DIR`, else `<cache dir>/dev`."""
    explicit = os.environ.get("KUBESTEP_DEV_DIR")
    return Path(explicit).expanduser() if explicit else cache_dir() / "dev"


def default_crds_dir() -> Path | None:
    """`$KUBESTEP_CRDS_DIR`, else the repository's `crds/` next to `dev/` (if present)."""
    explicit = os.environ.get("KUBESTEP_CRDS_DIR")
    if explicit:
        return Path(explicit).expanduser()
    # dev/kubestep_dev/locations.py -> parents[2] is the repository root (in a checkout).
    candidate = Path(__file__).resolve().parents[2] / "crds"
    return candidate if candidate.is_dir() else None


def find_binary(name: str) -> Path:
    """Locate a control-plane binary.

    `$KUBESTEP_BIN_DIR` if set (and then only there), else `<cache dir>/bin`
    (where `make tools` puts them), else `$PATH`.
    """
    explicit = os.environ.get("KUBESTEP_BIN_DIR")
    searched: list[str] = []
    if explicit:
        candidate = Path(explicit).expanduser() / name
        if _is_executable(candidate):
            return candidate
        searched.append(f"$KUBESTEP_BIN_DIR ({explicit})")
    else:
        candidate = cache_dir() / "bin" / name
        if _is_executable(candidate):
            return candidate
        on_path = shutil.which(name)
        if on_path:
            return Path(on_path)
        searched += [str(candidate.parent), "$PATH"]
    raise MissingBinaryError(
        f"{name} not found (looked in {', '.join(searched)}). "
        "Build the pinned control-plane tools with `make tools` "
        "(runs hack/controlplane/build.sh; the first build takes several minutes)."
    )


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)
