#!/usr/bin/env bash
# Issue 23, step 0 (the spike): does systemd reach multi-user.target in a rootful podman container
# started the way kind starts a node, inside a network namespace of our own with no route out, on this
# host's hybrid cgroups (v1)? Nothing is pulled: the root file system is Debian bookworm (systemd 252, the
# last line that runs on cgroup v1) from the apt mirror this machine reaches, with kind v0.33.0's own
# entrypoint and units from its Go module. Research: ../shared/notes/kind-offline.md (B5-B8, step 0).
#
#   sudo bash hack/kind/spike.sh        # prints the verdict; KEEP=1 leaves the container and netns up
#   sudo KIND_SPIKE_IMAGE=localhost/kubestep-kind-node:v1.35.4 bash hack/kind/spike.sh
#                                       # the same boot check of the node image (hack/kind/node.sh), plus
#                                       # its containerd and the images preloaded into it (no cluster)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

NS=${KUBESTEP_KIND_NETNS:-kubestep-kind-spike}
CACHE=${KUBESTEP_KIND_CACHE:-$HOME/.cache/kubestep/kind}
IMAGE=${KIND_SPIKE_IMAGE:-localhost/kubestep-kind-spike:bookworm}
NET=kubestep-kind-spike
NAME=kubestep-kind-spike
KIND_VERSION=v0.33.0

say() { printf '== %s\n' "$*" >&2; }
die() { printf 'spike: %s\n' "$*" >&2; exit 1; }
# nsenter, not `ip netns exec`: that one also remounts /sys, and with it the cgroup mounts runc needs.
in_ns() { nsenter --net="/var/run/netns/$NS" "$@"; }

[ "$(id -u)" = 0 ] || die "run as root (rootful podman: kind's podman provider needs it on cgroup v1)"
for tool in podman mmdebstrap ip go; do command -v "$tool" >/dev/null || die "needs $tool"; done

# --- the host's side of kind's known traps (B5, B6, B7) ----------------------------------------
mkdir -p /lib/modules  # kind mounts it read-only; podman refuses a missing source
mkdir -p "$CACHE"
kind_containers_conf "$CACHE"  # lib.sh: runc, limits no higher than the hard ones

# --- the node's root file system: bookworm + systemd + kind's entrypoint and units ----------------
KIND_DIR=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
[ -f "$KIND_DIR/images/base/files/usr/local/bin/entrypoint" ] || die "kind $KIND_VERSION's entrypoint not found"
if ! podman image exists "$IMAGE"; then
  say "building $IMAGE (mmdebstrap bookworm, from the apt mirror; nothing from a registry)"
  rootfs="$CACHE/spike-rootfs.tar"
  [ -s "$rootfs" ] || mmdebstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,iproute2,iptables,procps,kmod,mount,util-linux,ca-certificates \
    --customize-hook="cp -a $KIND_DIR/images/base/files/usr/local/bin/entrypoint \$1/usr/local/bin/entrypoint" \
    --customize-hook="chmod 0755 \$1/usr/local/bin/entrypoint" \
    --customize-hook="cp $KIND_DIR/images/base/files/etc/systemd/system/kubelet.slice \$1/etc/systemd/system/" \
    --customize-hook="mkdir -p \$1/kind && echo spike > \$1/kind/version" \
    bookworm "$rootfs"
  podman import \
    --change 'ENV container=docker' \
    --change 'STOPSIGNAL SIGRTMIN+3' \
    --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
    "$rootfs" "$IMAGE" >/dev/null
fi

# --- the namespace: no route out, checked before and after ---------------------------------------
no_route_out() {
  if [ -n "$(ip -n "$NS" route show default)" ] || [ -n "$(ip -n "$NS" -6 route show default)" ]; then
    die "network namespace $NS has a default route (traffic must not leave the machine)"
  fi
}
cleanup() {
  [ "${KEEP:-0}" = 1 ] && return
  # In the namespace: netavark tears the container's network down where it set it up.
  in_ns podman rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
  podman volume rm -f "$NAME-var" >/dev/null 2>&1 || true
  in_ns podman network rm -f "$NET" >/dev/null 2>&1 || true
  ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$NS" 2>/dev/null || true
in_ns ip link set lo up
no_route_out

# --- the node, started as kind's podman provider starts one (provision.go), in the namespace ------
say "podman network $NET inside $NS (netavark makes its bridge and NAT there)"
in_ns podman network create -d bridge "$NET" >/dev/null 2>&1 || true
say "starting the node container with kind's flags"
in_ns podman run --name "$NAME" --detach --tty --net "$NET" -e container=podman \
  --cgroupns=private --hostname "$NAME" --privileged --tmpfs /tmp --tmpfs /run \
  --volume "$NAME-var:/var:suid,exec,dev" --volume /lib/modules:/lib/modules:ro \
  "$IMAGE" >/dev/null

state=unknown
for _ in $(seq 1 60); do
  state=$(podman exec "$NAME" systemctl is-system-running 2>/dev/null || true)
  case "$state" in running|degraded) break ;; esac
  sleep 1
done
no_route_out
say "entrypoint's log:"
podman logs "$NAME" 2>&1 | grep -E '^INFO|^WARN|^ERROR' | head -20 >&2 || true
multi=$(podman exec "$NAME" systemctl is-active multi-user.target 2>/dev/null || true)
say "systemctl is-system-running: $state; multi-user.target: $multi"
if [ "$state" = degraded ]; then
  podman exec "$NAME" systemctl --failed --no-legend >&2 || true
fi
say "cgroups the node sees (kubelet.slice is kind's):"
podman exec "$NAME" sh -c 'ls -d /sys/fs/cgroup/*/kubelet.slice 2>/dev/null; cat /proc/1/cgroup | head -5' >&2 || true
# A node image (hack/kind/node.sh) also has containerd enabled, with the images kubeadm needs preloaded.
if podman exec "$NAME" test -x /usr/local/bin/containerd; then
  for _ in $(seq 1 30); do
    podman exec "$NAME" systemctl is-active containerd.service >/dev/null 2>&1 && break
    sleep 1
  done
  say "containerd.service: $(podman exec "$NAME" systemctl is-active containerd.service 2>/dev/null || true);" \
    "kubelet.service: $(podman exec "$NAME" systemctl is-active kubelet.service 2>/dev/null || true)" \
    "(inactive until kubeadm writes /var/lib/kubelet/config.yaml)"
  say "images the node's CRI sees:"
  podman exec "$NAME" crictl images >&2 || true
  say "iptables mode the entrypoint chose: $(podman exec "$NAME" iptables --version 2>/dev/null || true)"
  # One pod through the node's runtime, as the kubelet would ask for it (no kubelet, no cluster): the
  # sandbox (pause, the bridge conflist, runc), then etcd from its preloaded image, in the pod.
  say "a pod through CRI (crictl runp + create/start etcd --version):"
  # shellcheck disable=SC2016  # expanded by the node's shell
  podman exec "$NAME" sh -euc '
    mkdir -p /tmp/probe-logs
    echo "{\"metadata\":{\"name\":\"probe\",\"namespace\":\"default\",\"uid\":\"probe-1\"},\"log_directory\":\"/tmp/probe-logs\",\"linux\":{\"cgroup_parent\":\"kubelet-probe.slice\"}}" > /tmp/pod.json
    echo "{\"metadata\":{\"name\":\"etcd\"},\"image\":{\"image\":\"registry.k8s.io/etcd:3.6.6-0\"},\"command\":[\"etcd\",\"--version\"],\"log_path\":\"etcd.log\"}" > /tmp/ctr.json
    pod=$(crictl runp /tmp/pod.json)
    echo "pod sandbox ready, IP $(crictl inspectp "$pod" | jq -r .status.network.ip)"
    c=$(crictl create "$pod" /tmp/ctr.json /tmp/pod.json)
    crictl start "$c" >/dev/null
    sleep 2
    echo "etcd in the pod: $(crictl logs "$c" 2>&1 | head -1)"
    crictl rm -f "$c" >/dev/null; crictl stopp "$pod" >/dev/null; crictl rmp "$pod" >/dev/null
  ' >&2 || { pod_failed=1; say "the pod did NOT run"; }
fi
if [ "$multi" = active ] && [ "${pod_failed:-0}" = 0 ]; then
  echo "spike: systemd $(podman exec "$NAME" systemctl --version | head -1 | cut -d' ' -f2) reached multi-user.target ($state) in $NS, no route out"
else
  echo "spike: BLOCKED: multi-user.target is '$multi', system '$state', pod failed: ${pod_failed:-0}"
  podman logs "$NAME" 2>&1 | tail -40 >&2
  exit 2
fi
