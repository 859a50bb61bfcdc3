#!/usr/bin/env bash
# Issue 23, step 3 of ../shared/notes/kind-offline.md: the images kubeadm v1.35.4 asks the node's
# containerd for, built here (nothing is pulled) and tagged exactly as `kubeadm config images list`
# names them, each then saved as a docker-archive for the node image's preload (hack/kind/node.sh) or
# `kind load image-archive`:
#
#   registry.k8s.io/kube-{apiserver,controller-manager,scheduler}:v1.35.4   static binary, empty root
#   registry.k8s.io/kube-proxy:v1.35.4         Debian bookworm + iptables (legacy) + conntrack
#   registry.k8s.io/etcd:3.6.6-0               etcd v3.6.16 (the one the project builds; 3.6.6 is not served)
#   registry.k8s.io/coredns/coredns:v1.13.1    coredns v1.14.7 (v1.13.1 is not served); skipped if unbuilt
#   registry.k8s.io/pause:3.10.1               localhost/kubestep-pause:1 (hack/image/build.sh), re-tagged
#
# Binaries come from hack/kind/build.sh and hack/controlplane/build.sh. No container runs to build an
# image (podman import of a tar); each is then started once, without a network, to print its version.
#
#   sudo bash hack/kind/images.sh          # FORCE=1 rebuilds the images that exist
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../controlplane/versions.env
. "$here/../controlplane/versions.env"  # KUBERNETES_VERSION, ETCD_VERSION

COREDNS_VERSION=${COREDNS_VERSION:-v1.14.7}
CACHE=${KUBESTEP_KIND_CACHE:-$HOME/.cache/kubestep/kind}
K8S_CACHE=${KUBESTEP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubestep}
K8S_BIN=$K8S_CACHE/kubernetes-$KUBERNETES_VERSION
ETCD_BIN=$K8S_CACHE/etcd-$ETCD_VERSION/etcd
COREDNS_BIN=$CACHE/coredns-$COREDNS_VERSION/coredns
PAUSE_LOCAL=${PAUSE_IMAGE:-localhost/kubestep-pause:1}
OUT=$CACHE/images
TIMES=$CACHE/build-times.tsv
mkdir -p "$OUT"

# What kubeadm v1.35.4 names (cmd/kubeadm/app/constants: DefaultEtcdVersion, CoreDNSVersion, PauseVersion).
REG=registry.k8s.io
ETCD_TAG=3.6.6-0
COREDNS_TAG=v1.13.1
PAUSE_TAG=3.10.1

say() { printf '[kind images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'kind images: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (the node's rootful podman keeps its images in root's store)"
for tool in podman mmdebstrap; do command -v "$tool" >/dev/null || die "needs $tool"; done
# runc, not crun (crun refuses this host's hybrid cgroups); limits at or below the current ones
# (lowering needs no capability; CAP_SYS_RESOURCE is missing). No network: a version check needs none.
RUN=(podman run --rm --network none --runtime "$(command -v runc)" --ulimit nofile=4096:4096 --ulimit nproc=4096:4096)

wanted() {  # wanted REF: true when REF must be (re)built
  [ "${FORCE:-0}" = 1 ] || ! podman image exists "$1"
}
timed() {  # timed NAME SECONDS
  printf '%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "image:$1" - "$2" >> "$TIMES"
}

# static_image REF BINARY ENTRYPOINT_PATH: one static binary on an empty root (as hack/argo/images.sh
# does), with what programs expect to find: /tmp, /etc/passwd and /etc/group, PATH. kubeadm's static
# pods call the bare command names (kube-apiserver, etcd), so the binaries sit in /usr/local/bin.
static_image() {
  local ref=$1 binary=$2 path=$3 work start=$SECONDS
  [ -x "$binary" ] || die "$binary is missing: run hack/kind/build.sh"
  wanted "$ref" || { say "exists: $ref"; return 0; }
  work=$(mktemp -d)
  mkdir -p "$work/root/etc" "$work/root/tmp" "$work/root/$(dirname "$path")"
  chmod 1777 "$work/root/tmp"
  cp "$binary" "$work/root/$path"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' > "$work/root/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' > "$work/root/etc/group"
  tar -C "$work/root" --owner=0 --group=0 -cf "$work/image.tar" .
  podman import --quiet --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' --change "ENTRYPOINT [\"/$path\"]" \
    "$work/image.tar" "$ref" >/dev/null
  rm -rf "$work"
  timed "$ref" $((SECONDS - start))
  say "built $ref in $((SECONDS - start)) s"
}

# kube-proxy shells out to iptables-restore/-save and conntrack, so its image is a Debian rootfs. It
# uses the legacy iptables backend: kind's entrypoint picks legacy inside a podman node (no rules in
# either backend at boot, 0 >= 0), and kube-proxy must program the same tables as the node's kubelet.
proxy_image() {
  local ref=$REG/kube-proxy:$KUBERNETES_VERSION work start=$SECONDS
  [ -x "$K8S_BIN/kube-proxy" ] || die "$K8S_BIN/kube-proxy is missing: run hack/kind/build.sh"
  wanted "$ref" || { say "exists: $ref"; return 0; }
  work=$(mktemp -d)
  say "kube-proxy's rootfs: mmdebstrap bookworm (from the apt mirror)"
  # shellcheck disable=SC2016  # $1 is mmdebstrap's, expanded by its hook shell
  mmdebstrap --quiet --variant=minbase --include=iptables,conntrack,nftables,kmod,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='chroot "$1" update-alternatives --set iptables /usr/sbin/iptables-legacy' \
    --customize-hook='chroot "$1" update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy' \
    --customize-hook="cp '$K8S_BIN/kube-proxy' \"\$1/usr/local/bin/kube-proxy\"" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$work/rootfs.tar"
  podman import --quiet --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENTRYPOINT ["/usr/local/bin/kube-proxy"]' "$work/rootfs.tar" "$ref" >/dev/null
  rm -rf "$work"
  timed "$ref" $((SECONDS - start))
  say "built $ref in $((SECONDS - start)) s"
}

# The sandbox image: the project's static pause (hack/image/pause.c), built the same way if missing.
pause_image() {
  local ref=$REG/pause:$PAUSE_TAG work
  wanted "$ref" || { say "exists: $ref"; return 0; }
  if ! podman image exists "$PAUSE_LOCAL"; then
    command -v gcc >/dev/null || die "gcc is missing (the pause image is built from hack/image/pause.c)"
    work=$(mktemp -d)
    gcc -Os -static -o "$work/pause" "$repo/hack/image/pause.c"
    strip "$work/pause"
    tar -C "$work" --owner=0 --group=0 -cf "$work/pause.tar" pause
    podman import --quiet --change 'ENTRYPOINT ["/pause"]' --change 'USER 65535:65535' "$work/pause.tar" "$PAUSE_LOCAL" >/dev/null
    rm -rf "$work"
  fi
  podman tag "$PAUSE_LOCAL" "$ref"
  say "tagged $PAUSE_LOCAL as $ref"
}

save() {  # save REF: $OUT/<name>_<tag>.tar, a docker-archive (what ctr import and kind load read)
  local ref=$1 file start=$SECONDS
  file=$OUT/$(printf '%s' "${ref#"$REG"/}" | tr '/:' '_-').tar
  if [ -s "$file" ] && [ "$(cat "$file.id" 2>/dev/null)" = "$(podman image inspect --format '{{.Id}}' "$ref")" ]; then
    say "saved: $file"
  else
    rm -f "$file"
    podman save --format docker-archive -o "$file.tmp" "$ref"
    mv "$file.tmp" "$file"
    podman image inspect --format '{{.Id}}' "$ref" > "$file.id"
    say "saved $ref to $file ($(du -m "$file" | cut -f1) MB, $((SECONDS - start)) s)"
  fi
  printf '%s\t%s\n' "$ref" "$(basename "$file")" >> "$OUT/images.tsv.tmp"
}

: > "$OUT/images.tsv.tmp"
for c in kube-apiserver kube-controller-manager kube-scheduler; do
  static_image "$REG/$c:$KUBERNETES_VERSION" "$K8S_BIN/$c" "usr/local/bin/$c"
done
proxy_image
static_image "$REG/etcd:$ETCD_TAG" "$ETCD_BIN" usr/local/bin/etcd
pause_image
refs=("$REG/kube-apiserver:$KUBERNETES_VERSION" "$REG/kube-controller-manager:$KUBERNETES_VERSION"
  "$REG/kube-scheduler:$KUBERNETES_VERSION" "$REG/kube-proxy:$KUBERNETES_VERSION" "$REG/etcd:$ETCD_TAG"
  "$REG/pause:$PAUSE_TAG")
if [ -x "$COREDNS_BIN" ]; then
  # Upstream's layout: /coredns, the entrypoint kubeadm's Deployment relies on (it passes args only).
  static_image "$REG/coredns/coredns:$COREDNS_TAG" "$COREDNS_BIN" coredns
  refs+=("$REG/coredns/coredns:$COREDNS_TAG")
else
  say "SKIPPED coredns: $COREDNS_BIN is not built (the node comes up without cluster DNS)"
fi

# Each image starts, without a network, and reports the version it was built from.
for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
  say "$c: $("${RUN[@]}" "$REG/$c:$KUBERNETES_VERSION" --version 2>&1 | head -1)"
done
say "kube-proxy's iptables: $("${RUN[@]}" --entrypoint iptables "$REG/kube-proxy:$KUBERNETES_VERSION" --version 2>&1 | head -1)"
say "etcd: $("${RUN[@]}" "$REG/etcd:$ETCD_TAG" --version 2>&1 | head -1)"
if [ -x "$COREDNS_BIN" ]; then
  say "coredns: $("${RUN[@]}" "$REG/coredns/coredns:$COREDNS_TAG" -version 2>&1 | head -1)"
fi

for ref in "${refs[@]}"; do save "$ref"; done
mv "$OUT/images.tsv.tmp" "$OUT/images.tsv"  # what node.sh preloads: reference and archive, per line
say "images saved in $OUT:"
du -ch "$OUT"/*.tar >&2
