#!/usr/bin/env bash
# kubectl against the node's control plane, from inside its network namespace
# (the API server is not reachable from outside it). Needs root.
#   hack/node/kubectl.sh get pods -A -o wide
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/node/lib.sh
. "$here/lib.sh"
exec nsenter --net="/var/run/netns/$NETNS" "$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"
