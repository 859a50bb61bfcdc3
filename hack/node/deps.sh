#!/usr/bin/env bash
# The Debian packages the node and the images need (make node-e2e), installed when missing.
# Needs root and apt. Why each: containerd (the CRI runtime; 1.6 works with kubelet 1.35),
# runc (crun refuses this machine's hybrid cgroup v1 hierarchy), containernetworking-plugins
# (bridge, host-local, loopback), iptables and conntrack (kube-proxy's Service routing),
# buildah and podman (build the images from the Dockerfile, save them for containerd),
# mmdebstrap (the Python base image from Debian packages), gcc (the static pause binary).
set -euo pipefail
packages=(containerd runc containernetworking-plugins iptables conntrack buildah podman mmdebstrap uidmap gcc libc6-dev jq)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "[deps] all present: ${packages[*]}" >&2
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "[deps] missing ${missing[*]}: run as root (apt-get install)" >&2; exit 1; }
echo "[deps] installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
