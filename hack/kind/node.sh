#!/usr/bin/env bash
# Issue 23, steps 4-5 of ../shared/notes/kind-offline.md: a kind node image, assembled here the way
# `kind build node-image` assembles one (pkg/build/nodeimage/buildcontext.go), without docker and
# without a registry:
#
#   localhost/kubestep-kind-base:bookworm   step 4: kind v0.33.0's base image (images/base/Dockerfile),
#                                           replayed on Debian bookworm (systemd 252 still runs on
#                                           this host's cgroup v1; trixie's 257 does not)
#   localhost/kubestep-kind-node:v1.35.4    step 5: + kubeadm/kubelet/kubectl, containerd v2, crictl,
#                                           the CNI plugins, /kind/version, a bridge conflist, and the
#                                           images of hack/kind/images.sh preloaded into containerd
#
# The base's packages come from the apt mirror (mmdebstrap), kind's files from its Go module (read at
# build time, never copied into the repository), the binaries from hack/kind/build.sh. The preload runs
# containerd in a container of the base without a network, as kind's build container does, and commits it.
#
#   sudo bash hack/kind/node.sh            # FORCE=1 rebuilds the node image (the base stays cached)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=../controlplane/versions.env
. "$here/../controlplane/versions.env"  # KUBERNETES_VERSION

KIND_VERSION=${KIND_VERSION:-v0.33.0}
CACHE=${KUBESTEP_KIND_CACHE:-$HOME/.cache/kubestep/kind}
BIN=$CACHE/bin                       # hack/kind/build.sh's pinned set (symlinks)
CNI_BIN=$CACHE/cni-plugins-${CNI_PLUGINS_VERSION:-v1.9.1}
IMAGES=$CACHE/images                 # hack/kind/images.sh's archives and images.tsv
BASE=localhost/kubestep-kind-base:bookworm
NODE=${KIND_NODE_IMAGE:-localhost/kubestep-kind-node:$KUBERNETES_VERSION}
TIMES=$CACHE/build-times.tsv
PAUSE=registry.k8s.io/pause:3.10.1   # what kubeadm v1.35.4 names, and so the sandbox image too
# The pod network of the node's own CNI; kind's default podSubnet is 10.244.0.0/16, and a single node
# gets its first /24.
POD_SUBNET=${KIND_POD_SUBNET:-10.244.0.0/24}

say() { printf '[kind node %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'kind node: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (rootful podman: kind's podman provider needs it on cgroup v1)"
for tool in podman mmdebstrap jq go; do command -v "$tool" >/dev/null || die "needs $tool"; done
for b in kubeadm kubelet kubectl containerd containerd-shim-runc-v2 ctr crictl; do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing: run hack/kind/build.sh"
done
for b in bridge host-local loopback portmap; do
  [ -x "$CNI_BIN/$b" ] || die "$CNI_BIN/$b is missing: run hack/kind/build.sh cni"
done
[ -s "$IMAGES/images.tsv" ] || die "$IMAGES/images.tsv is missing: run hack/kind/images.sh"

KIND_DIR=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
FILES=$KIND_DIR/images/base/files
[ -f "$FILES/usr/local/bin/entrypoint" ] || die "kind $KIND_VERSION's images/base/files not found in its module"

# --- step 4: the base ----------------------------------------------------------------------------
build_base() {
  local root=$1
  # kind's package list (Dockerfile's clean-install) without fuse-overlayfs (rootless only), nfs-common
  # and open-iscsi (network storage the e2e does not use); plus runc, which kind builds (v1.4.3) and this
  # takes from Debian (1.1.5, the runc every container on this host runs with), and dbus, with which
  # the spike's systemd came up.
  mmdebstrap --quiet --variant=minbase \
    --include=systemd,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,e2fsprogs,bash,ca-certificates,curl,jq,procps,runc \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$root"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*
  # The Dockerfile's COPY lines: scripts and directories 0755, everything else 0644.
  install -m 0755 "$FILES"/usr/local/bin/* "$root/usr/local/bin/"
  mkdir -p "$root/kind/bin" "$root/LICENSES" "$root/etc/containerd" "$root/etc/default" \
    "$root/etc/sysctl.d" "$root/etc/systemd/system/kubelet.service.d"
  install -m 0644 "$FILES"/kind/README.txt "$root/kind/"
  install -m 0755 "$FILES"/kind/bin/* "$root/kind/bin/"
  chmod 0755 "$root/kind" "$root/kind/bin"
  install -m 0644 "$FILES"/LICENSES/* "$root/LICENSES/"
  install -m 0644 "$FILES"/etc/crictl.yaml "$root/etc/"
  install -m 0644 "$FILES"/etc/containerd/* "$root/etc/containerd/"
  install -m 0644 "$FILES"/etc/default/* "$root/etc/default/"
  install -m 0644 "$FILES"/etc/sysctl.d/* "$root/etc/sysctl.d/"
  install -m 0644 "$FILES"/etc/systemd/system/*.service "$FILES"/etc/systemd/system/*.slice "$root/etc/systemd/system/"
  install -m 0644 "$FILES"/etc/systemd/system/kubelet.service.d/* "$root/etc/systemd/system/kubelet.service.d/"
  # The Dockerfile's RUN lines: no services a node container must not start, no kmsg in journald,
  # systemd as /sbin/init (bookworm's systemd-sysv is left out for this), kind's units on, binfmt
  # (kernel-global) masked, and the directory kubeadm's packages would create.
  find "$root/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
  rm -f "$root"/lib/systemd/system/multi-user.target.wants/* "$root"/etc/systemd/system/*.wants/* \
    "$root"/lib/systemd/system/local-fs.target.wants/* "$root"/lib/systemd/system/sockets.target.wants/*udev* \
    "$root"/lib/systemd/system/sockets.target.wants/*initctl* "$root"/lib/systemd/system/basic.target.wants/*
  echo "ReadKMsg=no" >> "$root/etc/systemd/journald.conf"
  ln -sfn /usr/lib/systemd/systemd "$root/sbin/init"
  chroot "$root" systemctl enable kubelet.service containerd.service undo-mount-hacks.service
  chroot "$root" systemctl mask systemd-binfmt.service
  mkdir -p "$root/etc/kubernetes/manifests"
}

if [ "${FORCE_BASE:-0}" = 1 ] || ! podman image exists "$BASE"; then
  start=$SECONDS
  work=$(mktemp -d)
  say "building $BASE: mmdebstrap bookworm (apt mirror) + kind $KIND_VERSION's base files"
  build_base "$work/root"
  tar -C "$work/root" -cf "$work/base.tar" .
  podman import --change 'ENV container=docker' --change 'STOPSIGNAL SIGRTMIN+3' \
    --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' "$work/base.tar" "$BASE" >/dev/null
  rm -rf "$work"
  printf '%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "image:$BASE" "$KIND_VERSION" "$((SECONDS - start))" >> "$TIMES"
  say "built $BASE in $((SECONDS - start)) s"
else
  say "exists: $BASE"
fi

# --- step 5: the node ----------------------------------------------------------------------------
if [ "${FORCE:-0}" != 1 ] && podman image exists "$NODE"; then
  say "exists: $NODE (FORCE=1 rebuilds it)"
  exit 0
fi
start=$SECONDS
name=kubestep-kind-node-build
podman rm -f -t 0 "$name" >/dev/null 2>&1 || true  # left by a run that was killed
work=$(mktemp -d)
cleanup() { podman rm -f -t 0 "$name" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

# What the node adds to the base, laid out as it lands (buildcontext.go: binaries in /usr/bin, owned
# by root; the base Dockerfile: containerd and crictl in /usr/local/bin, CNI plugins in /opt/cni/bin).
stage=$work/stage
mkdir -p "$stage/usr/bin" "$stage/usr/local/bin" "$stage/opt/cni/bin" "$stage/kind" \
  "$stage/etc/containerd" "$stage/etc/cni/net.d"
for b in kubeadm kubelet kubectl; do install -m 0755 "$BIN/$b" "$stage/usr/bin/$b"; done
for b in containerd containerd-shim-runc-v2 ctr crictl; do install -m 0755 "$BIN/$b" "$stage/usr/local/bin/$b"; done
for b in bridge host-local loopback portmap; do install -m 0755 "$CNI_BIN/$b" "$stage/opt/cni/bin/$b"; done
printf '%s' "$KUBERNETES_VERSION" > "$stage/kind/version"  # the only version kind reads
# The runtime spec kind's base writes (`ctr oci spec`, static, runs here): the hook that mounts
# product_uuid, and no rlimits, so that pods never try to raise one.
"$BIN/ctr" oci spec \
  | jq '.hooks.createContainer[.hooks.createContainer| length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
  | jq 'del(.process.rlimits)' > "$stage/etc/containerd/cri-base.json"
# kind's config.toml names pause:3.10; kubeadm v1.35.4 names 3.10.1, which is the one images.sh builds.
grep -q 'sandbox_image = "registry.k8s.io/pause:3.10"' "$FILES/etc/containerd/config.toml" \
  || die "kind's containerd config no longer names pause:3.10; check sandbox_image"
# restrict_oom_score_adj as for rootless kind: this host withholds CAP_SYS_RESOURCE even from privileged
# containers, so runc cannot lower a pod's oom_score_adj (the sandbox's -998: "failed to update
# /proc/self/oom_score_adj: Permission denied", then "can't get final child's PID from pipe: EOF");
# containerd then clamps every value to its own.
grep -q 'restrict_oom_score_adj = false' "$FILES/etc/containerd/config.toml" \
  || die "kind's containerd config no longer sets restrict_oom_score_adj = false; check it"
sed -e "s|sandbox_image = \"registry.k8s.io/pause:3.10\"|sandbox_image = \"$PAUSE\"|" \
  -e 's|restrict_oom_score_adj = false|restrict_oom_score_adj = true|' \
  "$FILES/etc/containerd/config.toml" > "$stage/etc/containerd/config.toml"
# kindnetd cannot be built here (a nested module the proxy does not serve): the cluster is created with
# networking.disableDefaultCNI and this conflist instead. One node, so a bridge and host-local on the
# node's share of the pod subnet are the whole pod network; portmap for hostPort. containerd's CRI
# brings up each pod's lo with the loopback plugin itself.
cat > "$stage/etc/cni/net.d/10-kubestep-bridge.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "kubestep-bridge",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$POD_SUBNET" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF

# The preload, as kind's containerdImporter does it: containerd started in the build container, each
# archive imported into the k8s.io namespace pinned and not unpacked (no snapshot, so no mount needed).
cat > "$work/preload.sh" <<'EOF'
set -euo pipefail
cp -a /kubestep-stage/. /
containerd > /tmp/containerd.log 2>&1 &
pid=$!
for _ in $(seq 1 60); do
  [ -S /run/containerd/containerd.sock ] && ctr version > /dev/null 2>&1 && break
  sleep 1
done
ctr version > /dev/null || { tail -30 /tmp/containerd.log >&2; exit 1; }
while IFS=$'\t' read -r ref file; do
  echo "preload: $ref" >&2
  ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned --all-platforms \
    --no-unpack --digests - < "/kubestep-images/$file" > /dev/null
done < /kubestep-images/images.tsv
ctr --namespace=k8s.io images ls -q | grep -v '^sha256:' | grep -v '@sha256:'
kill "$pid"
wait "$pid" || true
EOF
say "preloading $(wc -l < "$IMAGES/images.tsv") images into a container of $BASE (no network)"
# runc, not crun (hybrid cgroups); rlimits at or below the current ones; /run and /tmp as tmpfs, so that
# containerd's state and socket stay out of the committed image, as the node mounts both anew.
podman run --name "$name" --network none --runtime "$(command -v runc)" \
  --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 --tmpfs /run --tmpfs /tmp \
  -v "$stage:/kubestep-stage:ro" -v "$IMAGES:/kubestep-images:ro" -v "$work/preload.sh:/kubestep-preload.sh:ro" \
  --entrypoint '["/bin/bash", "/kubestep-preload.sh"]' "$BASE"
podman commit --quiet \
  --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' --change 'CMD []' \
  --change 'ENV container=docker' --change 'STOPSIGNAL SIGRTMIN+3' \
  "$name" "$NODE" >/dev/null
printf '%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "image:$NODE" - "$((SECONDS - start))" >> "$TIMES"
say "built $NODE in $((SECONDS - start)) s: $(podman image inspect --format '{{.Size}}' "$NODE") bytes;" \
  "entrypoint $(podman image inspect --format '{{json .Config.Entrypoint}} cmd {{json .Config.Cmd}} stop {{.Config.StopSignal}}' "$NODE")"
