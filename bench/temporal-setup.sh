#!/usr/bin/env bash
# The Temporal peer for bench/side_by_side.py, built here and kept outside the repository
# (~/.cache/kubestep/temporal): the `temporal` CLI (its dev server inside) from the Go module
# github.com/temporalio/cli v1.5.1 (v1.9.1 replaces a nested module the proxy does not serve), and a
# venv with temporalio from PyPI. Idempotent; niced, as it takes minutes on two cores. Never part of
# the default test suite.
set -euo pipefail
ROOT="${KUBESTEP_TEMPORAL_DIR:-$HOME/.cache/kubestep/temporal}"
VERSION="${TEMPORAL_CLI_VERSION:-v1.5.1}"
SDK="${TEMPORALIO_VERSION:-1.35.0}"
BIN="$ROOT/bin-$VERSION"
mkdir -p "$ROOT"
if [[ ! -x "$BIN/temporal" ]]; then
  echo "building temporal CLI $VERSION (several minutes) ..."
  GOBIN="$BIN" GOFLAGS="-mod=mod -buildvcs=false" nice -n 19 \
    go install -trimpath "github.com/temporalio/cli/cmd/temporal@$VERSION"
fi
if [[ ! -x "$ROOT/venv/bin/python" ]]; then
  python3 -m venv "$ROOT/venv"
fi
if ! "$ROOT/venv/bin/python" -c "import temporalio, sys; sys.exit(temporalio.__version__ != '$SDK')" 2>/dev/null; then
  "$ROOT/venv/bin/pip" install -q "temporalio==$SDK"
fi
echo "temporal CLI: $BIN/temporal; python: $ROOT/venv/bin/python"
