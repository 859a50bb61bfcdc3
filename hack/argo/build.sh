#!/usr/bin/env bash
# Issue 22, step 1: Argo Workflows built here from its Go module (the only version the proxy serves,
# v4.0.5; security advisories exist for it: acceptable for a peer that runs only inside the isolated
# network namespace and never ships). The workflow controller, argoexec and the CLI, static, into a cache
# outside the repository (like the Temporal peer's): ~/.cache/kubestep/argo/<version>/bin.
#
#   bash hack/argo/build.sh          # idempotent: skips what is built
#
# The CLI embeds the UI (ui/embed.go: //go:embed dist/app), which is a webpack build of its own: an
# empty placeholder stands in for it (the peer needs no UI; `argo server` would serve a blank page).
set -euo pipefail
VERSION=${ARGO_VERSION:-v4.0.5}
MODULE=github.com/argoproj/argo-workflows/v4
CACHE=${KUBESTEP_ARGO_CACHE:-$HOME/.cache/kubestep/argo/$VERSION}
BIN=$CACHE/bin
mkdir -p "$BIN"

info=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "$MODULE@$VERSION")
dir=$(printf '%s\n' "$info" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
commit=$(printf '%s\n' "$info" | sed -n 's/.*"Hash": "\(.*\)",*/\1/p' | head -1)
[ -n "$dir" ] || { echo "argo: go mod download $MODULE@$VERSION failed" >&2; exit 1; }
src=$CACHE/src
if [ ! -f "$src/go.mod" ]; then
  rm -rf "$src"
  cp -r "$dir" "$src"  # the module cache is read-only; the UI placeholder goes in the copy
  chmod -R u+w "$src"
fi
mkdir -p "$src/ui/dist/app"
[ -e "$src/ui/dist/app/index.html" ] || echo '<!doctype html><title>Argo (UI not built)</title>' > "$src/ui/dist/app/index.html"

# Upstream's workflow/executor/osspecific/signal_linux.go is a symlink to signal_darwin.go, and module
# zips leave symlinks out: without it argoexec fails ("undefined: Setpgid"). The link, restored in the copy.
ln -sfn signal_darwin.go "$src/workflow/executor/osspecific/signal_linux.go"

# With a commit, a tag and a clean tree the binaries call themselves plain $VERSION (version.go); else
# "v4.0.5+unknown", and the controller would name its default executor image with that tag.
ldflags="-s -w -X $MODULE.version=$VERSION -X $MODULE.gitTag=$VERSION -X $MODULE.gitTreeState=clean"
ldflags="$ldflags -X $MODULE.gitCommit=${commit:-unknown}"
stamp="$BIN/.ldflags"
if [ "$(cat "$stamp" 2>/dev/null)" != "$ldflags" ]; then
  rm -f "$BIN/workflow-controller" "$BIN/argoexec" "$BIN/argo"  # built with other flags: again
  echo "$ldflags" > "$stamp"
fi
cd "$src"
for cmd in workflow-controller argoexec argo; do
  if [ -x "$BIN/$cmd" ]; then
    echo "argo: $BIN/$cmd is built" >&2
    continue
  fi
  echo "argo: building $cmd ($VERSION) ..." >&2
  start=$(date +%s)
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$BIN/$cmd" "./cmd/$cmd"
  echo "argo: $cmd built in $(( $(date +%s) - start )) s: $("$BIN/$cmd" version 2>/dev/null | head -1 || echo '?')" >&2
done
