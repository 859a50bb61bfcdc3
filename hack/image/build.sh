#!/usr/bin/env bash
# The project image and the pod sandbox (pause) image without Docker or a registry (issue 11, first step):
# a base image built here from
# Debian packages (mmdebstrap; bookworm's Python is 3.11), then the repository's Dockerfile with buildah,
# passed that base as PYTHON_IMAGE. With Docker and the default base the same Dockerfile builds unchanged.
#
#   make image                      # IMAGE=kubestep:dev
#   apt-get install buildah podman mmdebstrap runc    # once, as root
#
# What this machine needs, found by doing it:
# - runc, not crun: crun refuses the hybrid cgroup v1 hierarchy ("cgroups in hybrid mode not supported");
# - no raised rlimits (CAP_SYS_RESOURCE is missing): --ulimit with values at or below the current ones;
# - RUN steps reach PyPI through the host's network (--network host), and trust what the host trusts:
#   the base gets the host's extra CAs (/usr/local/share/ca-certificates), so pip can verify an
#   intercepting egress proxy. The image is for this machine; it is never pushed.
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE=${IMAGE:-kubestep:dev}
BASE=${PYTHON_IMAGE:-localhost/kubestep-python:3.11-bookworm}
SUITE=${DEBIAN_SUITE:-bookworm}

for tool in buildah podman mmdebstrap runc; do
  command -v "$tool" >/dev/null || { echo "image: $tool is missing (apt-get install buildah podman mmdebstrap runc)" >&2; exit 1; }
done
RUNTIME=$(command -v runc)
LIMITS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)  # lower than the current ones: lowering needs no capability

if ! podman image exists "$BASE"; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "image: building the base $BASE from Debian $SUITE packages" >&2
  mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-pip,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
    --customize-hook='ln -sf pip3 "$1"/usr/bin/pip' \
    --customize-hook='cp /usr/local/share/ca-certificates/*.crt "$1"/usr/local/share/ca-certificates/ 2>/dev/null || true' \
    --customize-hook='chroot "$1" update-ca-certificates' \
    "$SUITE" "$work/base.tar"
  podman import --change 'CMD ["python3"]' "$work/base.tar" "$BASE" >/dev/null
fi

# The runtime's sandbox image, for a kubelet here (nothing may be pulled): a static pause, alone.
PAUSE=${PAUSE_IMAGE:-localhost/kubestep-pause:1}
if ! podman image exists "$PAUSE"; then
  command -v gcc >/dev/null || { echo "image: gcc is missing (the pause image is built from hack/image/pause.c)" >&2; exit 1; }
  work_pause=$(mktemp -d)
  gcc -Os -static -o "$work_pause/pause" hack/image/pause.c
  strip "$work_pause/pause"
  tar -C "$work_pause" -cf "$work_pause/pause.tar" pause
  podman import --change 'ENTRYPOINT ["/pause"]' --change 'USER 65535:65535' "$work_pause/pause.tar" "$PAUSE" >/dev/null
  rm -rf "$work_pause"
  echo "image: built the sandbox image $PAUSE" >&2
fi

echo "image: building $IMAGE from the Dockerfile on $BASE" >&2
buildah bud --runtime "$RUNTIME" --network host "${LIMITS[@]}" \
  --build-arg "PYTHON_IMAGE=$BASE" -t "$IMAGE" .

# It runs as the chart runs it: uid 10001, read-only root, /tmp writable, no network.
podman run --rm --runtime "$RUNTIME" "${LIMITS[@]}" --network none --read-only --tmpfs /tmp \
  --user 10001:10001 "$IMAGE" --help >/dev/null
echo "image: $IMAGE built and runs (kubestep --help as uid 10001, read-only root, no network)" >&2
