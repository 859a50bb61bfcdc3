#!/usr/bin/env bash
# The rolling upgrade on the real node (issue 19): from the release before the step journal (06e6913) to
# this tree, with runs executing and waiting, as a user upgrades. KUBESTEP_UPGRADE_FROM=8598b30 starts
# from the release whose StepBatches hold spec.runs instead (its workers journal too: the second guard).
#
#   hack/node/upgrade.sh --images   # build the old images (cached by revision) and the old user image
#   hack/node/upgrade.sh            # the stage, on a running node (hack/node/e2e.sh calls both)
#
#  1. the old images: 06e6913's own hack/image/build.sh from `git archive` (IMAGE=kubestep:old-<rev>, kept
#     in podman's store and reused while it exists), and the user image tests/pods/userimage FROM it: the
#     user's module is the same before and after the upgrade, as for a user;
#  2. the old release as a user had it: the CRDs of this tree are deleted (the suite is done with them),
#     then `helm install` of the old chart installs its own CRDs (Helm does, on a first install) and runs
#     its operator and 2 worker replicas of the old image; plus one more worker pool pinned to the old
#     image ("straggler", 1 replica) that the upgrade leaves running: an old worker still claiming runs
#     after new workers journaled them, which a rollout makes possible and this makes certain;
#  3. runs of myflows-upgrade that execute (300 short steps), wait (6 timed waits each) and wait for
#     an event, each step leaving evidence of every execution (a StepExecuted Event with a fresh token);
#     once old workers have recorded steps of every run:
#  4. the new CRDs as docs/install.md tells users (`kubectl apply --server-side --force-conflicts -f
#     crds/`: Helm created them, so a server-side apply conflicts with its field manager), then
#     `helm upgrade` to this chart and the new images while the runs execute and wait: old and new
#     workers side by side during the rollout;
#  4b. then the new pool is scaled to nothing and back: its runs are handed back with only the old
#     straggler left to claim them, which the new CRD's guard must refuse (counted from its log);
#  5. the events; then every run must complete, no step may have executed twice, some runs must have
#     been resumed by new workers after old ones recorded steps (tests/pods/upgrade_runs.py); the old
#     claims the new CRD's guard refused are counted from the old workers' logs.
# Its figures go to stdout (e2e.sh puts them in bench/results/node-e2e.md).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=hack/node/lib.sh
. "$here/lib.sh"
cd "$repo"

OLD_REV=${KUBESTEP_UPGRADE_FROM:-06e6913}
# Which guard must refuse the old workers' claims: 06e6913 has no step journal (the journalHolder rule);
# a release with StepBatches of the spec.runs form, 8598b30, journals itself (the journalReader rule).
if git cat-file -e "$OLD_REV:crds/stepbatches.kubestep.io.yaml" 2>/dev/null; then
  OLD_JOURNALS=1
  HELD_BY_NEW=journalReader
  GUARD_MESSAGE="only a worker that reads them may claim the run"
else
  OLD_JOURNALS=0
  HELD_BY_NEW=journalHolder
  GUARD_MESSAGE="this run's newest steps are in the step journal"
fi
NS=${KUBESTEP_UPGRADE_NAMESPACE:-kubestep-upgrade}
RELEASE=kubestep-up
OLD_TAG=old-$OLD_REV
OLD_IMAGE=localhost/kubestep:$OLD_TAG
OLD_USER_IMAGE=localhost/kubestep-myflows:$OLD_TAG
NEW_USER_IMAGE=localhost/kubestep-myflows:dev

old_tree() {  # extracts the old revision into $1; fails loudly if this clone lacks it
  git cat-file -e "$OLD_REV^{commit}" 2>/dev/null || die "revision $OLD_REV (the release this upgrade test starts \
from) is not in this clone: the upgrade stage needs the full history of main (git fetch --unshallow, or \
actions/checkout with fetch-depth: 0); KUBESTEP_UPGRADE_FROM names another revision"
  git archive "$OLD_REV" | tar -x -C "$1"
}

build_images() {
  local src
  src=$(mktemp -d)
  old_tree "$src"
  if podman image exists "$OLD_IMAGE"; then
    say "upgrade: $OLD_IMAGE is in podman's store (built from $OLD_REV): reused"
  else
    say "upgrade: building $OLD_IMAGE with $OLD_REV's own hack/image/build.sh"
    (cd "$src" && IMAGE=kubestep:$OLD_TAG hack/image/build.sh)
  fi
  rm -rf "$src"
  buildah bud --runtime "$(command -v runc)" --network none --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
    --build-arg "KUBESTEP_IMAGE=$OLD_IMAGE" -t "$OLD_USER_IMAGE" tests/pods/userimage
}

if [ "${1:-}" = --images ]; then
  build_images
  exit 0
fi
# Only the figures go to stdout (fd 3); what kubectl and helm say goes to stderr.
exec 3>&1 1>&2

kubectl() { in_node "$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
helm() { in_node "$BIN/helm" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
work=$(mktemp -d)
follower=
finish() {
  if [ -n "$follower" ]; then kill "$follower" 2>/dev/null || true; fi
  if [ "${KUBESTEP_KEEP_NODE:-}" != 1 ]; then
    helm uninstall "$RELEASE" -n "$NS" --wait --timeout 2m >/dev/null 2>&1 || true
    kubectl delete namespace "$NS" --wait=false --ignore-not-found >/dev/null 2>&1 || true
  fi
  if [ "${KUBESTEP_KEEP_NODE:-}" = 1 ]; then say "upgrade: its files kept in $work"; else rm -rf "$work"; fi
}
trap finish EXIT
mkdir "$work/old"
old_tree "$work/old"
for image in "$OLD_IMAGE" "$OLD_USER_IMAGE" "$NEW_USER_IMAGE"; do
  podman image exists "$image" || die "$image is missing: run hack/node/upgrade.sh --images (and make node-e2e's images)"
done
# A node started without the old images loads them (up.sh is idempotent: it starts only what is not running).
for image in "$OLD_IMAGE" "$OLD_USER_IMAGE" "$NEW_USER_IMAGE"; do
  if ! ctr --address "$CONTAINERD_SOCK" --namespace k8s.io images ls -q | grep -qxF "$image"; then
    "$here/up.sh" localhost/kubestep:dev "$NEW_USER_IMAGE" "$OLD_IMAGE" "$OLD_USER_IMAGE"
    break
  fi
done

# ---- 2. the old release, as a user had it -------------------------------------------------------------
t0=$SECONDS
for release in $(helm list -A -q); do
  [ "$release" = "$RELEASE" ] || continue
  helm uninstall "$RELEASE" -n "$NS" --wait --timeout 2m
done
kubectl delete namespace "$NS" --ignore-not-found --timeout 120s
# This tree's CRDs go, with every run and batch of the suite: the old chart installs its own.
kubectl delete crd workflowexecutions.kubestep.io stepbatches.kubestep.io --ignore-not-found --timeout 180s
kubectl create namespace "$NS"
kubectl label namespace "$NS" pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/enforce-version=latest
values() {  # values(tag of the upgraded pool): the chart's values for this stage, old or new
  cat <<EOF
image: {repository: localhost/kubestep, tag: "$1", pullPolicy: Never}
leaseSeconds: 15  # the chart's default: a 2 s Lease expires under a rollout's CPU load on 2 cores
workers:
  - name: flows
    module: myflows
    image: {repository: localhost/kubestep-myflows, tag: "$1", pullPolicy: Never}
    concurrency: 10
    replicas: 2
    terminationGracePeriodSeconds: 60
  # Pinned to the old image in both releases: an old worker that outlives the rollout.
  - name: straggler
    module: myflows
    image: {repository: localhost/kubestep-myflows, tag: "$OLD_TAG", pullPolicy: Never}
    concurrency: 10
    replicas: 1
    terminationGracePeriodSeconds: 60
EOF
}
values "$OLD_TAG" >"$work/old-values.yaml"
values dev >"$work/new-values.yaml"
helm install "$RELEASE" "$work/old/charts/kubestep" -n "$NS" -f "$work/old-values.yaml" --wait --timeout 5m
kubectl -n "$NS" wait pods --all --for=condition=Ready --timeout=120s
if [ "$OLD_JOURNALS" = 0 ] && kubectl get crd stepbatches.kubestep.io >/dev/null 2>&1; then
  die "the old chart installed a StepBatch CRD: not the old release"
fi
kubectl -n "$NS" get pods -l app.kubernetes.io/component=worker -o name >"$work/old-pods"
install_seconds=$((SECONDS - t0))
say "upgrade: old release $OLD_REV installed ($install_seconds s): $(tr '\n' ' ' <"$work/old-pods")"
# The old workers' logs, followed until each pod ends: where a refused old claim shows.
nsenter --net="/var/run/netns/$NETNS" "$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" -n "$NS" logs -f \
  -l app.kubernetes.io/component=worker --prefix --max-log-requests 10 --tail=-1 >"$work/old-logs" 2>&1 &
follower=$!

# ---- 3. runs that execute and wait ----------------------------------------------------------------
runs() { in_node env KUBECONFIG="$KUBECONFIG_FILE" KUBECTL="$BIN/kubectl" .venv/bin/python -m tests.pods.upgrade_runs "$@"; }
runs start "$NS" "$work/runs.json"
runs progressed "$NS" "$work/runs.json"

# ---- 4. the new CRDs as users apply them, then helm upgrade while the runs go on ----------------------
runs preflight "$NS" "$work/runs.json"  # first: against the old CRDs, a new worker refuses to start
t=$SECONDS
kubectl apply --server-side --force-conflicts -f crds/
kubectl wait --for condition=established --timeout=60s crd/stepbatches.kubestep.io
helm upgrade "$RELEASE" charts/kubestep -n "$NS" -f "$work/new-values.yaml" --wait --timeout 5m
rollout=$((SECONDS - t))
kubectl -n "$NS" get pods -o wide >&2
say "upgrade: CRDs applied and helm upgrade rolled out in $rollout s"

# ---- 4b. the guard, for certain: the new workers go while the old one stays ---------------------------
# A rollout makes it possible that an old worker sees a run a new worker held queued again (handed back at
# SIGTERM, or its Lease lost); this makes it happen: the new pool is scaled to nothing, its runs are
# handed back, the straggler tries to claim them and must be refused; then the pool comes back.
t=$SECONDS
sleep 8  # the new workers hold runs and journal their steps
kubectl -n "$NS" scale deployment -l kubestep.io/worker=flows --replicas=0
kubectl -n "$NS" wait pods -l kubestep.io/worker=flows --for=delete --timeout=120s
sleep 6  # the straggler sees them queued and tries
held=$(kubectl -n "$NS" get wfx -o jsonpath="{range .items[*]}{.metadata.name} {.status.phase} {.status.$HELD_BY_NEW} {.status.worker}{\"\\n\"}{end}")
printf '%s\n' "$held" >&2
waiting_for_new=$(printf '%s\n' "$held" | awk '$2 == "Queued" && $3 != ""' | wc -l)
refused_now=$(kubectl -n "$NS" logs deployment/"$RELEASE"-worker-straggler --tail=-1 | grep -cF "$GUARD_MESSAGE" || true)
kubectl -n "$NS" scale deployment -l kubestep.io/worker=flows --replicas=2
kubectl -n "$NS" rollout status deployment -l kubestep.io/worker=flows --timeout=120s
guard_seconds=$((SECONDS - t))
say "upgrade: with only the old worker left, $waiting_for_new journaled runs stayed queued; it was refused $refused_now times"
if [ "$waiting_for_new" -gt 0 ] && [ "$refused_now" -eq 0 ]; then
  die "journaled runs were queued beside an old worker with free slots, but no refused claim was logged"
fi

# ---- 5. every run completes; no step ran twice ----------------------------------------------------
runs events "$NS" "$work/runs.json"
t=$SECONDS
set +e
runs check "$NS" "$work/runs.json" >"$work/figures"
verdict=$?
set -e
# The old claims the new CRD refused: 06e6913's worker logs the 422 ("worker error" and its traceback,
# whose last line is the CRD's message) and leaves the run queued for another worker. The follower saw
# every old pod that existed before the upgrade; a straggler pod that replaced one is read now.
kill "$follower" 2>/dev/null || true
follower=
for pod in $(kubectl -n "$NS" get pods -l kubestep.io/worker=straggler -o name); do
  grep -qxF "$pod" "$work/old-pods" || kubectl -n "$NS" logs "$pod" --prefix --tail=-1 >>"$work/old-logs" 2>&1 || true
done
refused=$(grep -cF "$GUARD_MESSAGE" "$work/old-logs" || true)
crashed=$(kubectl -n "$NS" get pods -o jsonpath='{range .items[*]}{.status.containerStatuses[0].restartCount}{"\n"}{end}' |
  awk '{s += $1} END {print s + 0}')
{
  cat "$work/figures"
  echo "old claims refused by the new CRD's guard (old workers' logs): $refused"
  echo "  of them while only the old worker was left (the new pool scaled to 0 for $guard_seconds s): $refused_now;"
  echo "  runs held by new workers that stayed queued meanwhile: $waiting_for_new"
  echo "container restarts in $NS: $crashed"
  echo "old release installed in $install_seconds s; CRDs applied and helm upgrade --wait: $rollout s; runs done $((SECONDS - t)) s after"
} >&3
[ "$crashed" = 0 ] || verdict=1  # an old worker refused must not crash (nor anything else restart)
if [ $verdict != 0 ]; then
  grep -F "$GUARD_MESSAGE" "$work/old-logs" | head -3 >&2 || true
  die "the rolling upgrade lost or repeated work: figures above"
fi
say "upgrade: no run lost, no recorded step run twice"
