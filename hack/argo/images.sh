#!/usr/bin/env bash
# Issue 22, step 2: the Argo peer's images, built here from the static binaries of hack/argo/build.sh
# (nothing pulled), named as Argo's manifests and its controller name them, so that a node with
# imagePullPolicy IfNotPresent (or Never) finds them: quay.io/argoproj/workflow-controller:v4.0.5 and
# quay.io/argoproj/argoexec:v4.0.5. Each is one binary on an empty root (as the pause image is, in
# hack/image/build.sh): static, nothing else is needed; argoexec's init container copies itself into the
# pod for the emissary. Steps run in the project's Debian base (localhost/kubestep-python:3.11-bookworm).
#
#   sudo bash hack/argo/images.sh
set -euo pipefail
VERSION=${ARGO_VERSION:-v4.0.5}
BIN=${KUBESTEP_ARGO_CACHE:-$HOME/.cache/kubestep/argo/$VERSION}/bin

image() {  # image NAME BINARY USER
  local name=$1 binary=$2 user=$3 work
  [ -x "$BIN/$binary" ] || { echo "argo images: $BIN/$binary is missing: run hack/argo/build.sh" >&2; exit 1; }
  work=$(mktemp -d)
  mkdir -p "$work/root/bin" "$work/root/tmp"
  cp "$BIN/$binary" "$work/root/bin/$binary"
  printf 'root:x:0:0::/:/bin/%s\nargo:x:%s:%s::/tmp:/bin/%s\n' "$binary" "$user" "$user" "$binary" > "$work/root/passwd"
  mkdir -p "$work/root/etc" && mv "$work/root/passwd" "$work/root/etc/passwd"
  tar -C "$work/root" -cf "$work/image.tar" .
  podman import --change "ENV PATH=/bin" --change "USER $user" --change "ENTRYPOINT [\"/bin/$binary\"]" \
    "$work/image.tar" "$name" >/dev/null
  rm -rf "$work"
  echo "argo images: $name ($(podman image inspect --format '{{.Size}}' "$name") bytes)" >&2
}

image "quay.io/argoproj/workflow-controller:$VERSION" workflow-controller 8737
image "quay.io/argoproj/argoexec:$VERSION" argoexec 8737
for name in workflow-controller argoexec; do
  # runc (crun refuses this host's hybrid cgroups) and limits below the current ones (hack/image/build.sh)
  podman run --rm --net=none --runtime "$(command -v runc)" --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
    "quay.io/argoproj/$name:$VERSION" version | head -1
done
