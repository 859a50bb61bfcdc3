# shellcheck shell=bash
# Shared by hack/kind/spike.sh and hack/kind/e2e.sh. Sourced, not run.

# kind_containers_conf CACHE: writes the project's own containers.conf and exports CONTAINERS_CONF
# (kind's podman calls inherit it), so that no other podman or buildah user of this machine changes.
# kind passes podman neither --runtime nor --ulimit: crun refuses this host's hybrid cgroups, and
# podman's default rlimits exceed the hard limits (CAP_SYS_RESOURCE is missing: never raise them).
kind_containers_conf() {
  local cache=$1 hard_nofile
  hard_nofile=$(ulimit -Hn)
  mkdir -p "$cache"
  # Not the hard limit for NPROC: runc then fails with "error setting rlimit type 6: operation not
  # permitted" (measured here); 4096, as kind-offline.md says, works.
  cat > "$cache/containers.conf" <<CONF
# hack/kind/lib.sh: runtime runc (crun refuses hybrid cgroups), limits no higher than this machine's
# hard ones (raising them needs CAP_SYS_RESOURCE).
[containers]
default_ulimits = ["nofile=${hard_nofile}:${hard_nofile}", "nproc=4096:4096"]
[engine]
runtime = "runc"
CONF
  export CONTAINERS_CONF="$cache/containers.conf"
}
