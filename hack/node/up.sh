#!/usr/bin/env bash
# A real Kubernetes node on this machine (issue 11, route A): the local control
# plane (`kubestep dev up`), kube-scheduler, kube-proxy (Service routing,
# iptables), containerd and a kubelet built from k8s.io/kubernetes, all in a
# network namespace with no route out. Idempotent: starts what is not running.
#
#   sudo hack/node/up.sh [IMAGE...]     # make node; images are loaded from podman's store
#
# Needs root, `make tools` + `hack/controlplane/build.sh node`, `make image`, and the
# Debian packages containerd, containernetworking-plugins, iptables, conntrack, runc.
#
# What this machine needs, found by doing it (../shared/notes/real-node-probe-2026-11-25.md):
# - cgroup v1 (hybrid): kubelet with cgroupDriver cgroupfs, failCgroupV1 false, no per-QoS cgroups;
# - CAP_SYS_RESOURCE is missing: containerd's CRI must not give sandboxes a negative oom_score_adj
#   (restrict_oom_score_adj), else runc fails with "can't get final child's PID from pipe: EOF";
# - with no default route kubelet cannot pick a node address: --node-ip names the node bridge's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=hack/node/lib.sh
. "$here/lib.sh"

KUBESTEP=${KUBESTEP:-$repo/.venv/bin/kubestep}
PAUSE_IMAGE=${PAUSE_IMAGE:-localhost/kubestep-pause:1}
IMAGES=("$@")
[ ${#IMAGES[@]} -gt 0 ] || IMAGES=("${IMAGE:-localhost/kubestep:dev}")

[ "$(id -u)" = 0 ] || die "needs root (network namespace, containerd, kubelet)"
for tool in containerd ctr containerd-shim-runc-v2 runc nsenter ip iptables conntrack podman; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install containerd runc iptables conntrack podman)"
done
[ -x /usr/lib/cni/bridge ] || die "the CNI plugins are missing (apt-get install containernetworking-plugins)"
for b in kubelet kube-scheduler kube-proxy kubectl kube-apiserver; do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing: run hack/controlplane/build.sh all && hack/controlplane/build.sh node"
done
[ -x "$KUBESTEP" ] || die "$KUBESTEP is missing: make venv"
mkdir -p "$NODE_DIR"/{run,logs,config,cni/net.d,containerd,kubelet,images}

# ---- the network namespace -----------------------------------------------------------------
if [ ! -e "/var/run/netns/$NETNS" ]; then
  ip netns add "$NETNS"
  say "created network namespace $NETNS"
fi
ip -n "$NETNS" link set lo up
if ! ip -n "$NETNS" link show "$NODE_BRIDGE" >/dev/null 2>&1; then
  ip -n "$NETNS" link add "$NODE_BRIDGE" type bridge
  ip -n "$NETNS" addr add "$NODE_IP/$NODE_PREFIX" dev "$NODE_BRIDGE"
fi
ip -n "$NETNS" link set "$NODE_BRIDGE" up
# Pods reach Services through the node: kube-proxy's DNAT, then routing.
in_node sysctl -qw net.ipv4.ip_forward=1
check_isolated
say "network namespace $NETNS: no default route, node address $NODE_IP"

# start NAME COMMAND...: run a component detached in the namespace, logged, tracked by a pid file.
start() {
  local name=$1; shift
  if running "$name"; then return 0; fi
  # nsenter and setsid exec (no fork), so $! is the component's own pid.
  nsenter --net="/var/run/netns/$NETNS" setsid "$@" >"$(log_file "$name")" 2>&1 </dev/null &
  echo $! >"$(pid_file "$name")"
  say "started $name (pid $!)"
}

# wait_for WHAT SECONDS COMMAND...: poll until the command succeeds.
wait_for() {
  local what=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$what not ready after ${seconds}s (logs: $NODE_DIR/logs)"
    sleep 0.5
  done
}

# ---- the control plane, reachable from pods at the node address ------------------------------
in_node "$KUBESTEP" dev up --state-dir "$PLANE_DIR" --advertise-address "$NODE_IP" >&2
kubectl() { in_node "$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# ---- containerd ------------------------------------------------------------------------------
cat >"$NODE_DIR/config/containerd.toml" <<EOF
version = 2
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # CAP_SYS_RESOURCE is missing here: sandboxes keep the runtime's oom_score_adj.
  restrict_oom_score_adj = true
  # The pods' network namespaces under our state directory, not /var/run/netns: down.sh removes
  # exactly these, never another runtime's.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni/net.d"
EOF
# The pods' network: one bridge, addresses from POD_SUBNET, the bridge is their gateway to the node.
cat >"$NODE_DIR/cni/net.d/10-kubestep.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "kubestep",
  "plugins": [
    {"type": "bridge", "bridge": "$POD_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_SUBNET"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$NODE_DIR/cni/ipam"}},
    {"type": "loopback"}
  ]
}
EOF
start containerd containerd --config "$NODE_DIR/config/containerd.toml"
wait_for containerd 30 ctr --address "$CONTAINERD_SOCK" version
ctr_k8s() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# ---- images: nothing is pulled; every image comes from podman's store --------------------------
for image in "$PAUSE_IMAGE" "${IMAGES[@]}"; do
  podman image exists "$image" || die "image $image is not in podman's store: run make image"
  id=$(podman image inspect --format '{{.Id}}' "$image")
  stamp="$NODE_DIR/images/$(echo "$image" | tr '/:' '__').id"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$id" ] && ctr_k8s images ls -q | grep -qxF "$image"; then
    continue
  fi
  archive="$NODE_DIR/images/load.tar"
  podman save --quiet --format oci-archive -o "$archive" "$image"
  ctr_k8s images import --base-name "${image%:*}" --digests=false "$archive" >/dev/null
  rm -f "$archive"
  echo "$id" >"$stamp"
  say "loaded $image"
done

# ---- kubelet ---------------------------------------------------------------------------------
ca=$PLANE_DIR/pki/ca.crt
cat >"$NODE_DIR/config/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $ca}
authorization: {mode: Webhook}
# This machine: cgroup v1, no CAP_SYS_RESOURCE, swap allowed, no eviction.
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
localStorageCapacityIsolation: false
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# No cluster DNS: in-cluster clients use KUBERNETES_SERVICE_HOST (an address).
clusterDomain: cluster.local
resolvConf: ""
serializeImagePulls: false
EOF
start kubelet "$BIN/kubelet" --config "$NODE_DIR/config/kubelet.yaml" \
  --kubeconfig "$KUBECONFIG_FILE" --root-dir "$NODE_DIR/kubelet" --cert-dir "$NODE_DIR/kubelet/pki" \
  --node-ip "$NODE_IP" --hostname-override "$NODE_NAME" --v=1

# ---- scheduler and Service routing -----------------------------------------------------------
start kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$KUBECONFIG_FILE" \
  --authentication-kubeconfig "$KUBECONFIG_FILE" --authorization-kubeconfig "$KUBECONFIG_FILE" \
  --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false
cat >"$NODE_DIR/config/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $KUBECONFIG_FILE}
hostnameOverride: $NODE_NAME
clusterCIDR: $CLUSTER_CIDR
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
# Leave the kernel's conntrack table sizes alone (global, and not ours to change).
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
EOF
start kube-proxy "$BIN/kube-proxy" --config "$NODE_DIR/config/kube-proxy.yaml"

wait_for "node $NODE_NAME" 120 kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
check_isolated
say "node $NODE_NAME Ready. kubectl in the node's namespace: hack/node/kubectl.sh get pods -A -o wide"
