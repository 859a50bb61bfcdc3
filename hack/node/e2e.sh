#!/usr/bin/env bash
# make node-e2e: the chart's pods on a real node, end to end (issue 11).
#  1. the images, without Docker: the project image (hack/image/build.sh) and a user image built
#     FROM it (tests/pods/userimage), both loaded into the node's containerd, never pulled;
#  2. the node (hack/node/up.sh), from scratch;
#  3. `helm install` with charts/kubestep/ci/node-values.yaml into a namespace that enforces
#     restricted Pod Security, waiting until every pod is Ready through its real probes;
#  4. the suite against it (KUBESTEP_TEST_KUBECONFIG), then the tests only pods can run
#     (tests/pods), all inside the node's network namespace;
#  5. the Postgres step store in pods (hack/node/postgres-store.sh: a PostgreSQL pod, helm upgrade
#     --set stepStore=postgres, the lifecycle tests, then back to the default store);
#  6. the rolling upgrade from the release before the step journal (hack/node/upgrade.sh: its
#     images are built in step 1, from `git archive 06e6913`, and cached in podman's store);
#  7. the node is stopped and deleted afterwards (KUBESTEP_KEEP_NODE=1 keeps it), also on failure.
# Stage times and the in-pod figures go to bench/results/node-e2e.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=hack/node/lib.sh
. "$here/lib.sh"
# shellcheck source=hack/node/suite.sh
. "$here/suite.sh"  # e2e_chart, e2e_suite, e2e_pods: shared with make kind-e2e
cd "$repo"

NAMESPACE=${KUBESTEP_E2E_NAMESPACE:-kubestep}
IMAGE=localhost/kubestep:dev
USER_IMAGE=localhost/kubestep-myflows:dev
# The release the upgrade stage starts from (hack/node/upgrade.sh names its images so).
PG_IMAGE=localhost/kubestep-postgres:15
OLD_IMAGE=localhost/kubestep:old-${KUBESTEP_UPGRADE_FROM:-06e6913}
OLD_USER_IMAGE=localhost/kubestep-myflows:old-${KUBESTEP_UPGRADE_FROM:-06e6913}
RESULTS=bench/results/node-e2e.md
figures=$(mktemp)
upgrade_figures=$(mktemp)
stages=()
stage() { stages+=("| $1 | $2 s |"); say "$1: $2 s"; }

cleanup() {
  if [ "${KUBESTEP_KEEP_NODE:-}" = 1 ]; then
    say "node kept (KUBESTEP_KEEP_NODE=1): hack/node/kubectl.sh get pods -A; stop with hack/node/down.sh --purge"
  else
    "$here/down.sh" --purge || true
  fi
  rm -f "$figures" "$upgrade_figures"
}
trap cleanup EXIT

t=$SECONDS
"$here/deps.sh"
stage "Debian packages (hack/node/deps.sh)" $((SECONDS - t))

t=$SECONDS
IMAGE=kubestep:dev hack/image/build.sh
buildah bud --runtime "$(command -v runc)" --network none --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
  --build-arg "KUBESTEP_IMAGE=$IMAGE" -t "$USER_IMAGE" tests/pods/userimage
stage "images (project, user)" $((SECONDS - t))
t=$SECONDS
hack/image/postgres.sh
stage "PostgreSQL image (hack/image/postgres.sh; cached in podman's store)" $((SECONDS - t))
t=$SECONDS
"$here/upgrade.sh" --images
stage "old images for the upgrade (06e6913's build.sh; cached by revision)" $((SECONDS - t))

t=$SECONDS
"$here/down.sh" --purge
"$here/up.sh" "$IMAGE" "$USER_IMAGE" "$PG_IMAGE" "$OLD_IMAGE" "$OLD_USER_IMAGE"
stage "node start (from nothing, images loaded)" $((SECONDS - t))

kubectl() { in_node "$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
t=$SECONDS
e2e_chart in_node "$BIN" "$KUBECONFIG_FILE" "$NAMESPACE"
stage "helm install to every pod Ready" $((SECONDS - t))
pods_before=$(kubectl get nodes -o wide; echo; kubectl -n "$NAMESPACE" get pods -o wide)
printf '%s\n' "$pods_before" >&2

export KUBESTEP_TEST_KUBECONFIG=$KUBECONFIG_FILE KUBESTEP_E2E_NAMESPACE=$NAMESPACE
t=$SECONDS
e2e_suite in_node "$KUBECONFIG_FILE" "$NAMESPACE"
stage "the suite against the pods" $((SECONDS - t))
t=$SECONDS
e2e_pods in_node "$KUBECONFIG_FILE" "$NAMESPACE" "$figures"
stage "tests/pods (only real pods)" $((SECONDS - t))
t=$SECONDS
"$here/postgres-store.sh" "$NAMESPACE" | tee -a "$figures"
stage "the Postgres step store in pods (hack/node/postgres-store.sh)" $((SECONDS - t))
t=$SECONDS
# The suite's release goes first (the upgrade stage replaces the CRDs with the old release's).
in_node "$BIN/helm" uninstall kubestep --kubeconfig "$KUBECONFIG_FILE" -n "$NAMESPACE" --wait --timeout 2m
"$here/upgrade.sh" | tee "$upgrade_figures"
stage "rolling upgrade from ${KUBESTEP_UPGRADE_FROM:-06e6913} with runs in flight (hack/node/upgrade.sh)" $((SECONDS - t))
check_isolated
# Nothing pulled: the kubelet records a Pulling event before any pull, containerd logs PullImage.
pulls=$(kubectl get events -A --field-selector reason=Pulling -o name)
[ -z "$pulls" ] || die "the kubelet tried to pull (nothing may pull): $pulls"
! grep -F 'PullImage' "$(log_file containerd)" || die "containerd tried to pull (nothing may pull): lines above"
say "no default route in $NETNS, no pull attempted"

{
  e2e_report "make node-e2e" "$figures" "${stages[@]}"
  echo
  echo "Rolling upgrade with runs in flight (hack/node/upgrade.sh: the old release's chart, CRDs and images,"
  echo "then \`kubectl apply --server-side --force-conflicts -f crds/\` and \`helm upgrade\` while runs execute and wait):"
  echo
  echo '```'
  cat "$upgrade_figures"
  echo '```'
  echo
  echo "After helm install:"
  echo
  echo '```'
  printf '%s\n' "$pods_before"
  echo '```'
} >"$RESULTS"
say "all green; stage times and figures in $RESULTS"
