#!/usr/bin/env bash
# make bench-argo (issue 22): Argo Workflows v4.0.5 and Kubestep on the same real node, one window.
#  1. Argo's binaries and images (hack/argo/build.sh, images.sh; cached in ~/.cache/kubestep/argo) and
#     the project image (hack/image/build.sh), nothing pulled;
#  2. the node (hack/node/up.sh) from scratch, with those images loaded;
#  3. Argo's namespaced install (hack/argo/install.sh) and Kubestep's chart (hack/argo/kubestep-values.yaml);
#  4. bench/argo_peer.py inside the node's network namespace -> bench/results/argo_peer.{md,json};
#  5. the node is stopped and deleted (KUBESTEP_KEEP_NODE=1 keeps it), also on failure.
# Not in CI: the controller's cold build alone takes ~10 min on 2 cores. Needs root, like make node-e2e.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=hack/node/lib.sh
. "$repo/hack/node/lib.sh"
cd "$repo"
VERSION=${ARGO_VERSION:-v4.0.5}
ARGO_BIN=${KUBESTEP_ARGO_CACHE:-$HOME/.cache/kubestep/argo/$VERSION}/bin
STEP_IMAGE=localhost/kubestep-python:3.11-bookworm

cleanup() {
  if [ "${KUBESTEP_KEEP_NODE:-}" = 1 ]; then
    say "node kept (KUBESTEP_KEEP_NODE=1); stop it with hack/node/down.sh --purge"
  else
    hack/node/down.sh --purge || true
  fi
}

t=$SECONDS
for b in workflow-controller argoexec argo; do
  [ -x "$ARGO_BIN/$b" ] || { bash "$here/build.sh"; break; }
done
for i in workflow-controller argoexec; do
  podman image exists "quay.io/argoproj/$i:$VERSION" || { bash "$here/images.sh"; break; }
done
IMAGE=kubestep:dev hack/image/build.sh
say "images: $((SECONDS - t)) s"

trap cleanup EXIT
t=$SECONDS
hack/node/down.sh --purge
hack/node/up.sh localhost/kubestep:dev "quay.io/argoproj/workflow-controller:$VERSION" \
  "quay.io/argoproj/argoexec:$VERSION" "$STEP_IMAGE"
say "node: $((SECONDS - t)) s"

t=$SECONDS
bash "$here/install.sh"
kubectl() { in_node "$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
kubectl create namespace kubestep
in_node "$BIN/helm" install kubestep charts/kubestep --kubeconfig "$KUBECONFIG_FILE" -n kubestep \
  -f "$here/kubestep-values.yaml" --wait --timeout 5m
kubectl -n kubestep wait pods --all --for=condition=Ready --timeout=120s
say "Argo and Kubestep installed: $((SECONDS - t)) s"

in_node .venv/bin/python bench/argo_peer.py --plane-dir "$PLANE_DIR" "$@"
check_isolated
pulls=$(kubectl get events -A --field-selector reason=Pulling -o name)
[ -z "$pulls" ] || die "the kubelet tried to pull (nothing may pull): $pulls"
say "no default route in $NETNS, nothing pulled; results in bench/results/argo_peer.md"
