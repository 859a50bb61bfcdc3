#!/usr/bin/env bash
# make kind-e2e (issue 23): the chart in a kind cluster, then the suite and tests/pods against it, the
# same tests as `make node-e2e`. One script, two routes; they differ only where marked `route:`.
#
#   docker (a laptop; the default when a `docker` command exists): `docker build` of the Dockerfile
#     and of tests/pods/userimage, kind's stock `kindest/node` image, `kind-config.yaml` (a
#     control-plane and a worker node, kind's own CNI), the tests on the host.
#   local  (this machine: root, rootful podman, no docker, no registry): the images built by
#     hack/image/build.sh (buildah), the node image of `make kind-image` (hack/kind/node.sh),
#     `hack/kind/kind-config.yaml` (one node, the image's bridge CNI, kubelet allowed on cgroup v1),
#     `KIND_EXPERIMENTAL_PROVIDER=podman` with the project's containers.conf, and the cluster (kind and
#     its podman calls), kubectl, helm and the tests inside the network namespace $NETNS, which has no
#     route out: podman makes its `kind` bridge and NAT in the namespace it runs in. Checked before and
#     after, with no image pull attempted. (The image builds run on the host's network.)
#
# Common to both: images go in as archives (`<engine> save` + `kind load image-archive`), the chart is
# installed with charts/kubestep/ci/node-values.yaml into a namespace that enforces restricted Pod
# Security, `--wait` until every pod is Ready; then `pytest tests` and `pytest tests/pods`. The cluster
# is deleted afterwards, also on failure (KUBESTEP_KEEP_KIND=1 keeps it). Stage times go to
# bench/results/kind-e2e.md.
#
#   make kind-e2e                      # KIND_ROUTE=docker|local picks a route; KIND_CLUSTER names it;
#                                      # KIND_NODE_IMAGE (docker route) pins kindest/node
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
# shellcheck source=hack/node/suite.sh
. hack/node/suite.sh  # e2e_chart, e2e_suite, e2e_pods: the same install and tests as make node-e2e

ROUTE=${KIND_ROUTE:-$(command -v docker >/dev/null && echo docker || echo local)}
CLUSTER=${KIND_CLUSTER:-kubestep-e2e}
NAMESPACE=${KUBESTEP_E2E_NAMESPACE:-kubestep}
TOOLS=${KUBESTEP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubestep}/bin  # helm, kubectl (make tools)
CACHE=${KUBESTEP_KIND_CACHE:-$HOME/.cache/kubestep/kind}
NETNS=${KUBESTEP_KIND_NETNS:-kubestep-kind}
IMAGE=localhost/kubestep:dev
USER_IMAGE=localhost/kubestep-myflows:dev
RESULTS=${KIND_E2E_RESULTS:-bench/results/kind-e2e.md}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT  # until the cluster's own clean-up below takes over
kubeconfig=$work/kubeconfig
stages=()

say() { printf '[kind-e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "error: $*"; exit 1; }
stage() { stages+=("| $1 | $2 s |"); say "$1: $2 s"; }

case "$ROUTE" in
  docker)
    KIND=${KIND:-kind}
    ENGINE=${DOCKER:-docker}
    CONFIG=kind-config.yaml
    [ "$ENGINE" = docker ] || die "the docker route builds and saves with docker (kind's docker provider loads from it), not $ENGINE"
    in_ns() { "$@"; }
    ;;
  local)
    [ "$(id -u)" = 0 ] || die "the local route needs root (rootful podman on cgroup v1)"
    KIND=${KIND:-$CACHE/bin/kind}
    ENGINE=podman
    CONFIG=hack/kind/kind-config.yaml
    # shellcheck source-path=SCRIPTDIR source=lib.sh
    . "$here/lib.sh"
    kind_containers_conf "$CACHE"  # runc, limits no higher than the hard ones
    export KIND_EXPERIMENTAL_PROVIDER=podman
    # nsenter, not `ip netns exec`: that one also remounts /sys, hiding the cgroup mounts runc needs.
    in_ns() { nsenter --net="/var/run/netns/$NETNS" "$@"; }
    ;;
  *) die "KIND_ROUTE must be docker or local, not '$ROUTE'" ;;
esac
[ "$ROUTE" = local ] || command -v "$KIND" >/dev/null || die "no kind command ($KIND)"  # local: built below
for tool in helm kubectl; do [ -x "$TOOLS/$tool" ] || die "$TOOLS/$tool is missing: run make tools"; done
kubectl() { in_ns "$TOOLS/kubectl" --kubeconfig "$kubeconfig" "$@"; }

# route local: the namespace holds loopback and what podman adds (its bridge, the node's veth), and
# never a default route.
isolated() {
  [ "$ROUTE" = local ] || return 0
  if [ -n "$(ip -n "$NETNS" route show default)" ] || [ -n "$(ip -n "$NETNS" -6 route show default)" ]; then
    die "network namespace $NETNS has a default route (pod traffic must not leave this machine)"
  fi
}

cleanup() {
  if [ "${KUBESTEP_KEEP_KIND:-}" = 1 ]; then
    if [ "$ROUTE" = local ]; then
      say "cluster kept (KUBESTEP_KEEP_KIND=1): kubeconfig $kubeconfig, reachable only inside the namespace" \
        "(nsenter --net=/var/run/netns/$NETNS ...); delete with: nsenter --net=/var/run/netns/$NETNS env" \
        "KIND_EXPERIMENTAL_PROVIDER=podman CONTAINERS_CONF=$CONTAINERS_CONF $KIND delete cluster --name $CLUSTER;" \
        "nsenter --net=/var/run/netns/$NETNS podman network rm -f kind; ip netns del $NETNS"
    else
      say "cluster kept (KUBESTEP_KEEP_KIND=1): kubeconfig $kubeconfig; delete with: $KIND delete cluster --name $CLUSTER"
    fi
    return
  fi
  in_ns "$KIND" delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  if [ "$ROUTE" = local ]; then
    # podman's `kind` network lives in the namespace: remove it there, then the namespace.
    in_ns podman network rm -f kind >/dev/null 2>&1 || true
    ip netns del "$NETNS" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# --- images: the node (route local), the project's, the user's ------------------------------------
t=$SECONDS
if [ "$ROUTE" = local ]; then
  hack/node/deps.sh  # podman, buildah, mmdebstrap, runc, jq (Debian's)
  bash "$here/build.sh" && bash "$here/images.sh" && bash "$here/node.sh"
  # build.sh goes on without coredns if its build fails; the cluster cannot (kubeadm deploys it).
  grep -q coredns "$CACHE/images/images.tsv" || die "no coredns image (hack/kind/build.sh coredns failed?)"
  stage "node image (make kind-image: kind, kubeadm, containerd, images, node)" $((SECONDS - t))
  t=$SECONDS
  IMAGE=kubestep:dev hack/image/build.sh
  buildah bud --runtime "$(command -v runc)" --network none --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
    --build-arg "KUBESTEP_IMAGE=$IMAGE" -t "$USER_IMAGE" tests/pods/userimage
else
  # No provenance attestations: with the containerd image store (Docker Desktop, Docker 29) `docker save`
  # writes an index naming attestation blobs it leaves out, and kind's import then fails with
  # "ctr: content digest ... not found" (kubernetes-sigs/kind#3795).
  BUILDX_NO_DEFAULT_ATTESTATIONS=1 "$ENGINE" build -t "$IMAGE" .
  BUILDX_NO_DEFAULT_ATTESTATIONS=1 "$ENGINE" build --build-arg "KUBESTEP_IMAGE=$IMAGE" -t "$USER_IMAGE" tests/pods/userimage
fi
stage "images (project, user)" $((SECONDS - t))

# --- the cluster --------------------------------------------------------------------------------
t=$SECONDS
if [ "$ROUTE" = local ]; then
  mkdir -p /lib/modules  # kind mounts it read-only; podman refuses a missing source
  # kind's known issues: too few inotify instances stop kubelet and containerd in the node. A sysctl,
  # not an rlimit; only ever raised.
  [ "$(sysctl -n fs.inotify.max_user_instances)" -ge 512 ] || sysctl -qw fs.inotify.max_user_instances=512
  if [ -e "/var/run/netns/$NETNS" ]; then
    # A cluster kept or left by an earlier run: removed inside the namespace its network was made in
    # (outside it, netavark fails with "failed to get bridge interface").
    in_ns "$KIND" delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    in_ns podman network rm -f kind >/dev/null 2>&1 || true
    ip netns del "$NETNS"
  fi
  ip netns add "$NETNS"
  ip -n "$NETNS" link set lo up
fi
isolated
in_ns "$KIND" delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
image_flag=()
[ "$ROUTE" = local ] || [ -z "${KIND_NODE_IMAGE:-}" ] || image_flag=(--image "$KIND_NODE_IMAGE")
in_ns "$KIND" create cluster --name "$CLUSTER" --config "$CONFIG" --kubeconfig "$kubeconfig" --wait 180s \
  ${image_flag[@]+"${image_flag[@]}"}
isolated
# kind waits for the node; the cluster's DNS (kubeadm's coredns, built here on the local route) too.
kubectl -n kube-system wait deployment/coredns --for=condition=Available --timeout=120s
stage "kind create cluster (node Ready, coredns Available)" $((SECONDS - t))

t=$SECONDS
if [ "$ROUTE" = local ]; then
  podman save --multi-image-archive --format docker-archive -o "$work/images.tar" "$IMAGE" "$USER_IMAGE"
else
  "$ENGINE" save -o "$work/images.tar" "$IMAGE" "$USER_IMAGE"
fi
in_ns "$KIND" load image-archive "$work/images.tar" --name "$CLUSTER"
rm -f "$work/images.tar"
stage "images into the node (save + kind load image-archive)" $((SECONDS - t))

# --- the chart, then the tests ------------------------------------------------------------------
t=$SECONDS
e2e_chart in_ns "$TOOLS" "$kubeconfig" "$NAMESPACE"
stage "helm install to every pod Ready" $((SECONDS - t))
cluster=$(kubectl get nodes -o wide; echo; kubectl get pods -A -o wide)
printf '%s\n' "$cluster" >&2

t=$SECONDS
e2e_suite in_ns "$kubeconfig" "$NAMESPACE"
stage "the suite against the pods" $((SECONDS - t))
t=$SECONDS
e2e_pods in_ns "$kubeconfig" "$NAMESPACE" "$work/figures"
stage "tests/pods (only real pods)" $((SECONDS - t))

isolated
# Nothing pulled: the kubelet records a Pulling event before any pull it tries.
pulls=$(kubectl get events -A --field-selector reason=Pulling -o name)
[ -z "$pulls" ] || die "the kubelet tried to pull (nothing may pull): $pulls"
if [ "$ROUTE" = local ]; then
  # containerd logs every PullImage it is asked for, the kubelet's and kind's alike.
  containerd_log=$(podman exec "$CLUSTER-control-plane" journalctl -u containerd --no-pager)
  ! grep -F PullImage <<<"$containerd_log" || die "containerd in the node was asked to pull (nothing may pull): lines above"
  say "no default route in $NETNS, no pull attempted"
fi

{
  e2e_report "make kind-e2e (route $ROUTE)" "$work/figures" "${stages[@]}"
  echo
  echo "$(in_ns "$KIND" version), config \`$CONFIG\`."
  echo
  echo "After helm install (\`kubectl get nodes,pods -o wide\`):"
  echo
  echo '```'
  printf '%s\n' "$cluster"
  echo '```'
} >"$RESULTS"
say "all green; stage times in $RESULTS"
