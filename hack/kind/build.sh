#!/usr/bin/env bash
# Issue 23, steps 1-2 of ../shared/notes/kind-offline.md: the binaries a kind node image needs, built
# here from their Go modules (nothing is downloaded but modules from the Go proxy), static (CGO off),
# into a cache outside the repository, each only when missing:
#
#   ~/.cache/kubestep/kind/<component>-<version>/   one directory per pinned version
#   ~/.cache/kubestep/kind/bin/                     symlinks to the pinned set
#   ~/.cache/kubestep/kind/build-times.tsv          one line per build that ran (seconds)
#
# - the kind CLI (sigs.k8s.io/kind);
# - kubeadm, next to kubelet and kubectl in hack/controlplane's cache (same wrapper module, same
#   version stamps), and the control-plane binaries hack/kind/images.sh puts in images;
# - containerd v2 (containerd, containerd-shim-runc-v2, ctr); runc is Debian's, in the node's rootfs;
# - the CNI plugins the node's bridge conflist uses (bridge, host-local, loopback, portmap);
# - crictl (debugging inside the node) and coredns (cluster DNS; the node works without it).
#
#   bash hack/kind/build.sh [all|kind|kubeadm|containerd|cni|crictl|coredns]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../controlplane/versions.env
. "$here/../controlplane/versions.env"  # KUBERNETES_VERSION, ETCD_VERSION

KIND_VERSION=${KIND_VERSION:-v0.33.0}
# v2.3.x is the line kind v0.33.0's base image ships (v2.3.4); v2.3.7 is its newest patch the proxy serves.
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.3.7}
CNI_PLUGINS_VERSION=${CNI_PLUGINS_VERSION:-v1.9.1}
CRI_TOOLS_VERSION=${CRI_TOOLS_VERSION:-v1.37.0}
# kubeadm v1.35 names coredns v1.13.1, which the proxy does not serve; v1.14.7 is built and tagged so.
COREDNS_VERSION=${COREDNS_VERSION:-v1.14.7}

CACHE=${KUBESTEP_KIND_CACHE:-$HOME/.cache/kubestep/kind}
K8S_CACHE=${KUBESTEP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubestep}
mkdir -p "$CACHE/bin"
TIMES=$CACHE/build-times.tsv
# Static binaries: the node's rootfs and the component images carry no C library of ours to match.
export CGO_ENABLED=0
# A module whose go directive is newer than this toolchain must fail here, not fetch a toolchain.
export GOTOOLCHAIN=local

say() { printf '[kind build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'kind build: %s\n' "$*" >&2; exit 1; }

# origin MODULE@VERSION: the commit the module zip was made from, for the version stamps (as the
# binaries upstream releases carry it); "unknown" when the proxy does not say.
origin() {
  local hash
  hash=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "$1" | sed -n 's/.*"Hash": "\(.*\)",*/\1/p' | head -1)
  echo "${hash:-unknown}"
}

# gobuild OUT_DIR VERSION "LDFLAGS" "TAGS" PACKAGE... : `go install PACKAGE@VERSION`, one at a time (a
# time per binary), for modules without replace directives. GOBIN is a staging directory, so that a
# build that fails half-way leaves nothing that looks cached.
gobuild() {
  local out=$1 version=$2 ldflags=$3 tags=$4; shift 4
  local pkg name start stage
  mkdir -p "$out"
  for pkg in "$@"; do
    name=${pkg##*/}
    if [ -x "$out/$name" ]; then
      say "cached: $out/$name"
      continue
    fi
    stage=$(mktemp -d "$out/.stage.XXXXXX")
    say "building $name ($pkg@$version) ..."
    start=$SECONDS
    # -mod is not allowed with pkg@version: GOFLAGS from the caller must not carry it.
    GOFLAGS=-buildvcs=false GOBIN=$stage go install -trimpath -tags "$tags" -ldflags "$ldflags" "$pkg@$version"
    mv "$stage/$name" "$out/$name"
    rmdir "$stage"
    printf '%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$name" "$version" "$((SECONDS - start))" >> "$TIMES"
    say "built $name in $((SECONDS - start)) s"
  done
}

link() {  # link DIR NAME...: the pinned set, in $CACHE/bin
  local dir=$1 name; shift
  for name in "$@"; do ln -sfn "$dir/$name" "$CACHE/bin/$name"; done
}

build_kind() {
  local out=$CACHE/kind-$KIND_VERSION
  gobuild "$out" "$KIND_VERSION" "-s -w -X sigs.k8s.io/kind/pkg/cmd/kind/version.gitCommit=$(origin "sigs.k8s.io/kind@$KIND_VERSION")" "" \
    sigs.k8s.io/kind
  link "$out" kind
}

# kubeadm joins kubelet and kubectl in hack/controlplane's cache, built from the same wrapper module
# (hack/controlplane/kubernetes: the staging replaces go install cannot honour) with the same stamps.
build_kubeadm() {
  # kubelet, kubectl and the control-plane binaries the images need: cached there, or built there.
  bash "$repo/hack/controlplane/build.sh" kubernetes
  bash "$repo/hack/controlplane/build.sh" node
  local out=$K8S_CACHE/kubernetes-$KUBERNETES_VERSION start=$SECONDS
  if [ -x "$out/kubeadm" ]; then
    say "cached: $out/kubeadm"
  else
    bash "$repo/hack/controlplane/build.sh" kubeadm  # the same wrapper and version stamps as kubelet's
    printf '%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" kubeadm "$KUBERNETES_VERSION" "$((SECONDS - start))" >> "$TIMES"
  fi
  local v
  v=$("$out/kubeadm" version -o short)
  [ "$v" = "$KUBERNETES_VERSION" ] || die "kubeadm reports $v, not $KUBERNETES_VERSION"
  ln -sfn "$out/kubeadm" "$K8S_CACHE/bin/kubeadm"
  link "$out" kubeadm kubelet kubectl
}

build_containerd() {
  local out=$CACHE/containerd-$CONTAINERD_VERSION m=github.com/containerd/containerd/v2
  # The Makefile's stamps (version.Version/Revision/Package); the tags leave out the snapshotters
  # kind never selects (btrfs needs cgo), as kind's base image does.
  gobuild "$out" "$CONTAINERD_VERSION" \
    "-s -w -X $m/version.Version=$CONTAINERD_VERSION -X $m/version.Revision=$(origin "$m@$CONTAINERD_VERSION") -X $m/version.Package=$m" \
    "no_btrfs no_devmapper no_zfs no_aufs" \
    "$m/cmd/containerd" "$m/cmd/containerd-shim-runc-v2" "$m/cmd/ctr"
  link "$out" containerd containerd-shim-runc-v2 ctr
}

# The node's own CNI (kindnetd cannot be built here: a nested module the proxy does not serve): a bridge
# conflist with host-local IPAM, portmap for hostPort, loopback for every pod.
build_cni() {
  local out=$CACHE/cni-plugins-$CNI_PLUGINS_VERSION m=github.com/containernetworking/plugins
  gobuild "$out" "$CNI_PLUGINS_VERSION" "-s -w -X $m/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION" "" \
    "$m/plugins/main/bridge" "$m/plugins/ipam/host-local" "$m/plugins/main/loopback" "$m/plugins/meta/portmap"
}

build_crictl() {
  local out=$CACHE/cri-tools-$CRI_TOOLS_VERSION
  gobuild "$out" "$CRI_TOOLS_VERSION" "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRI_TOOLS_VERSION" "" \
    sigs.k8s.io/cri-tools/cmd/crictl
  link "$out" crictl
}

build_coredns() {
  local out=$CACHE/coredns-$COREDNS_VERSION m=github.com/coredns/coredns
  gobuild "$out" "$COREDNS_VERSION" "-s -w -X $m/coremain.GitCommit=$(origin "$m@$COREDNS_VERSION")" "" "$m"
  link "$out" coredns
}

only=${1:-all}
case "$only" in
  all)
    build_kind; build_kubeadm; build_containerd; build_cni; build_crictl
    # Last and not fatal: a single-node e2e can live without cluster DNS (images.sh skips its image).
    # Its own process, so that set -e still stops it at the first error.
    bash "$0" coredns || say "coredns did NOT build (the error is above); images.sh will skip its image"
    ;;
  kind|kubeadm|containerd|cni|crictl|coredns) "build_$only" ;;
  *) die "unknown target '$only' (all kind kubeadm containerd cni crictl coredns)" ;;
esac
say "ready in $CACHE (build times: $TIMES)"
