# shellcheck shell=bash
# Shared by hack/node/e2e.sh (make node-e2e) and hack/kind/e2e.sh (make kind-e2e), so that both install
# the chart alike and run the same tests against its pods. Sourced, not run; from the repository's root.
#
# Each takes RUN first: what runs a command where the cluster is reachable (a function that enters
# the node's or kind's network namespace, or one that runs its arguments as they are).

# e2e_chart RUN BIN KUBECONFIG NAMESPACE: the chart (charts/kubestep/ci/node-values.yaml: two worker
# pools, one of a user image, and the HTTP server) into a new namespace that enforces restricted Pod
# Security, then every pod Ready through its real probes. BIN holds kubectl and helm (make tools).
e2e_chart() {
  local run=$1 bin=$2 kubeconfig=$3 namespace=$4
  "$run" "$bin/kubectl" --kubeconfig "$kubeconfig" create namespace "$namespace"
  "$run" "$bin/kubectl" --kubeconfig "$kubeconfig" label namespace "$namespace" \
    pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/enforce-version=latest
  "$run" "$bin/helm" install kubestep charts/kubestep --kubeconfig "$kubeconfig" -n "$namespace" \
    -f charts/kubestep/ci/node-values.yaml --wait --timeout 5m
  "$run" "$bin/kubectl" --kubeconfig "$kubeconfig" -n "$namespace" wait pods --all --for=condition=Ready --timeout=120s
}

# e2e_suite RUN KUBECONFIG NAMESPACE: the default suite against the installed chart (tests that start
# or kill local processes skip themselves there).
e2e_suite() {
  "$1" env KUBESTEP_TEST_KUBECONFIG="$2" KUBESTEP_E2E_NAMESPACE="$3" \
    .venv/bin/pytest -p no:cacheprovider tests --ignore=tests/unit
}

# e2e_pods RUN KUBECONFIG NAMESPACE FIGURES: tests/pods, what only real pods show; their figures are
# appended to the file FIGURES.
e2e_pods() {
  "$1" env KUBESTEP_TEST_KUBECONFIG="$2" KUBESTEP_E2E_NAMESPACE="$3" KUBESTEP_TEST_PODS=1 \
    KUBESTEP_NODE_RESULTS="$4" .venv/bin/pytest -p no:cacheprovider -s tests/pods
}

# e2e_report TITLE FIGURES STAGE_ROW...: the head of an e2e's results file (bench/results/*-e2e.md): the
# title with the time and revision, the stage times, then the in-pod figures (the file FIGURES).
e2e_report() {
  local title=$1 figures=$2
  shift 2
  echo "# $title: $(date -u +%Y-%m-%dT%H:%MZ) on $(git rev-parse --short HEAD)"
  echo
  echo "| stage | time |"
  echo "|---|---:|"
  printf '%s\n' "$@"
  echo
  echo "In-pod figures (tests/pods):"
  echo
  echo '```'
  cat "$figures" 2>/dev/null || true
  echo '```'
}
