# shellcheck shell=bash disable=SC2034  # sourced: the variables are used by the scripts that source it
# Shared by hack/node/*.sh: where the node lives and how to reach into it.
# Sourced, not run.
#
# The node's network: one namespace the project creates ($NETNS), holding only
# loopback, the node's bridge ($NODE_BRIDGE, $NODE_IP: the API server's and the
# kubelet's address) and the pods' bridge ($POD_BRIDGE, made by the CNI bridge
# plugin), with no route out. Everything that speaks to a pod or Service address
# runs in it: etcd, the API server, controller manager, scheduler, kube-proxy,
# containerd, kubelet, the pods, and the tests.

NETNS=${KUBESTEP_NODE_NETNS:-kubestep-node}
NODE_NAME=${KUBESTEP_NODE_NAME:-kubestep-node}
NODE_BRIDGE=ksnode0
NODE_IP=10.77.0.1
NODE_PREFIX=24
POD_BRIDGE=kscni0
POD_SUBNET=10.244.0.0/24
CLUSTER_CIDR=10.244.0.0/16
# Everything of the node (the control plane's state, containerd's root, the
# kubelet's root, logs, pid files) lives under one directory outside the repo.
CACHE=${KUBESTEP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubestep}
NODE_DIR=${KUBESTEP_NODE_DIR:-$CACHE/node}
PLANE_DIR=$NODE_DIR/plane
BIN=$CACHE/bin
KUBECONFIG_FILE=$PLANE_DIR/kubeconfig
CONTAINERD_SOCK=$NODE_DIR/containerd/containerd.sock
# Ports of the node's own components (inside the namespace; the plane keeps its defaults).
KUBELET_PORT=10250
KUBELET_HEALTHZ_PORT=10248
SCHEDULER_PORT=10259
PROXY_HEALTHZ_PORT=10256
PROXY_METRICS_PORT=10249

say() { printf '[node %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Run a command inside the node's network namespace only: `ip netns exec` also
# remounts /sys in a new mount namespace, which hides the cgroup mounts that
# kubelet and runc need ("failed to find cgroup mounts").
in_node() { nsenter --net="/var/run/netns/$NETNS" "$@"; }

pid_file() { echo "$NODE_DIR/run/$1.pid"; }
log_file() { echo "$NODE_DIR/logs/$1.log"; }

running() {
  local pid
  pid=$(cat "$(pid_file "$1")" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# The rule: the namespace holds no default route (IPv4 or IPv6) and no route
# but its own subnets. Checked before anything starts, and again by the tests.
check_isolated() {
  local routes
  [ -e "/var/run/netns/$NETNS" ] || die "network namespace $NETNS does not exist"
  if [ -n "$(ip -n "$NETNS" route show default)" ] || [ -n "$(ip -n "$NETNS" -6 route show default)" ]; then
    die "network namespace $NETNS has a default route: refusing to start (pod traffic must not leave the machine)"
  fi
  routes=$(ip -n "$NETNS" -4 route show | awk '{print $1}' | grep -vxE "${NODE_IP%.*}.0/$NODE_PREFIX|${POD_SUBNET}" || true)
  [ -z "$routes" ] || die "network namespace $NETNS has a route out of its own subnets: $routes"
}
