#!/usr/bin/env bash
# The Postgres step store in real pods (issue 19): on a running node with the suite's release installed
# (hack/node/e2e.sh calls this after tests/pods), a PostgreSQL pod (hack/node/postgres.yaml, the image
# hack/image/postgres.sh builds), then `helm upgrade --set stepStore=postgres` as docs/install.md tells
# users, then the lifecycle tests against the pods, and the rows they left in the database. Then back to
# the default store, so what follows runs as before.
#
#   hack/node/postgres-store.sh NAMESPACE     # figures on stdout
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=hack/node/lib.sh
. "$here/lib.sh"
cd "$repo"
NAMESPACE=${1:?usage: hack/node/postgres-store.sh NAMESPACE}
kubectl() { in_node "$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
helm() { in_node "$BIN/helm" --kubeconfig "$KUBECONFIG_FILE" -n "$NAMESPACE" "$@"; }
psql() {
  kubectl -n "$NAMESPACE" exec deploy/kubestep-postgres -- \
    /usr/lib/postgresql/15/bin/psql -h /tmp -U kubestep -d postgres -tAc "$1"
}

t=$SECONDS
kubectl -n "$NAMESPACE" apply -f hack/node/postgres.yaml >&2
kubectl -n "$NAMESPACE" rollout status deploy/kubestep-postgres --timeout=120s >&2
# This node has no cluster DNS (hack/node/up.sh): the workers reach the database at the Service's
# cluster IP (kube-proxy), so the Secret's DSN names that address instead of the Service's name.
ip=$(kubectl -n "$NAMESPACE" get service kubestep-postgres -o jsonpath='{.spec.clusterIP}')
[ -n "$ip" ] || die "the kubestep-postgres Service has no cluster IP"
kubectl -n "$NAMESPACE" patch secret kubestep-pg --type merge \
  -p "{\"stringData\": {\"dsn\": \"postgresql://kubestep:e2e-only-password@$ip:5432/postgres\"}}" >&2
helm upgrade kubestep charts/kubestep --reuse-values --set stepStore=postgres \
  --set postgres.existingSecret=kubestep-pg --wait --timeout 5m >&2
kubectl -n "$NAMESPACE" rollout status deploy --timeout=180s >&2
# Every worker pod of the new revision says it serves with the Postgres store.
# (The old revision's pods may still be terminating: only those not being deleted.)
live='{{range .items}}{{if not .metadata.deletionTimestamp}}pod/{{.metadata.name}}{{"\n"}}{{end}}{{end}}'
for pod in $(kubectl -n "$NAMESPACE" get pods -l app.kubernetes.io/component=worker -o go-template="$live"); do
  kubectl -n "$NAMESPACE" logs "$pod" | grep -q 'step store: postgres' || {
    kubectl -n "$NAMESPACE" logs "$pod" | tail -20 >&2
    die "$pod does not serve with the Postgres store"
  }
done
up=$((SECONDS - t))

t=$SECONDS
# All of them but the one about the Kubernetes stores' 1 MiB record limit (ConfigMap chunks): with
# Postgres a large record is archived in the database, and the run completes.
# The tests' client reads the history from the database too (KubestepClient(postgres_dsn=...) from
# $KUBESTEP_POSTGRES_DSN), as a user's would. It runs in the node's namespace, not in a pod, and that
# namespace routes the pods' network (the bridge) but not Services' (no route out at all): the pod's
# own address, then.
pod_ip=$(kubectl -n "$NAMESPACE" get pods -l app.kubernetes.io/name=kubestep-postgres \
  -o go-template='{{range .items}}{{if not .metadata.deletionTimestamp}}{{.status.podIP}}{{end}}{{end}}')
[ -n "$pod_ip" ] || die "the kubestep-postgres pod has no address"
in_node env KUBESTEP_TEST_KUBECONFIG="$KUBECONFIG_FILE" KUBESTEP_E2E_NAMESPACE="$NAMESPACE" \
  KUBESTEP_POSTGRES_DSN="postgresql://kubestep:e2e-only-password@$pod_ip:5432/postgres" \
  .venv/bin/pytest -p no:cacheprovider -q tests/test_lifecycle.py -k "not outgrow" >&2
suite=$((SECONDS - t))

runs=$(psql "select count(*) from kubestep_runs")
steps=$(psql "select count(*) from kubestep_steps")
chunks=$(psql "select count(*) from kubestep_chunks")
batches=$(kubectl -n "$NAMESPACE" get stepbatches -o name | wc -l)
[ "$runs" -gt 0 ] || die "no finished run in Postgres after the lifecycle tests"
printf '{"test": "postgres-store", "helm_upgrade_to_ready_seconds": %s, "lifecycle_tests_seconds": %s, "finished_runs_in_postgres": %s, "step_rows": %s, "chunks": %s, "stepbatches_in_namespace": %s}\n' \
  "$up" "$suite" "$runs" "$steps" "$chunks" "$batches"

helm upgrade kubestep charts/kubestep --reuse-values --set stepStore=batch --wait --timeout 5m >&2
kubectl -n "$NAMESPACE" rollout status deploy --timeout=180s >&2
