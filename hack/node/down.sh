#!/usr/bin/env bash
# Stop the node (hack/node/up.sh): kubelet, kube-proxy, scheduler, the pods'
# containers, containerd, the control plane; then delete the network namespace.
# `--purge` also deletes the node's directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=hack/node/lib.sh
. "$here/lib.sh"
KUBESTEP=${KUBESTEP:-$repo/.venv/bin/kubestep}
purge=false
[ "${1:-}" = --purge ] && purge=true

stop() {
  local name=$1 pid
  pid=$(cat "$(pid_file "$name")" 2>/dev/null) || return 0
  # Only a pid whose command line still names this node's directory or binaries.
  if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qE "$NODE_DIR|$BIN"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    say "stopped $name"
  fi
  rm -f "$(pid_file "$name")"
}

stop kubelet
stop kube-proxy
stop kube-scheduler
# The pods' containers: their shims outlive containerd, so kill them by their socket's address.
if [ -S "$CONTAINERD_SOCK" ]; then
  for task in $(ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
    ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks kill -s KILL "$task" >/dev/null 2>&1 || true
  done
fi
stop containerd
pkill -KILL -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" 2>/dev/null || true
# Mounts containerd and the kubelet left (overlay roots, shm, projected tokens, the pods' network
# namespaces: netns_mounts_under_state_dir), deepest first.
{ grep -F " $NODE_DIR/" /proc/self/mountinfo || true; } | awk '{print $5}' | sort -r | while read -r m; do
  umount -l "$m" 2>/dev/null || true
done
if [ -x "$KUBESTEP" ] && [ -d "$PLANE_DIR" ] && [ -e "/var/run/netns/$NETNS" ]; then
  nsenter --net="/var/run/netns/$NETNS" "$KUBESTEP" dev down --state-dir "$PLANE_DIR" >&2 || true
fi
if [ -e "/var/run/netns/$NETNS" ]; then
  ip netns del "$NETNS"
  say "deleted network namespace $NETNS"
fi
if $purge; then
  rm -rf "$NODE_DIR"
  say "deleted $NODE_DIR"
fi
