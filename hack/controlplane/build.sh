#!/usr/bin/env bash
# Builds the local control-plane tools (etcd, kube-apiserver,
# kube-controller-manager, kubectl, helm) from pinned Go modules into a cache
# outside the repository, only when missing. A version-named directory holds
# each build; ${KUBESTEP_CACHE_DIR}/bin holds symlinks to the pinned set, and
# is where `kubestep dev` looks first.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

cache=${KUBESTEP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubestep}
bin="$cache/bin"
mkdir -p "$bin"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=mod -trimpath"

say() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# build MODULE_DIR OUT_DIR LDFLAGS NAME=PACKAGE...
build() {
  local mod=$1 out=$2 ldflags=$3; shift 3
  local missing=()
  for spec in "$@"; do
    [ -x "$out/${spec%%=*}" ] || missing+=("$spec")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    say "cached: $out"
  else
    mkdir -p "$out"
    for spec in "${missing[@]}"; do
      local name=${spec%%=*} pkg=${spec#*=}
      local start=$SECONDS
      say "building $name (first build of a toolset takes minutes) ..."
      (cd "$here/$mod" && go build -ldflags "$ldflags" -o "$out/$name.tmp" "$pkg")
      mv "$out/$name.tmp" "$out/$name"
      say "built $name in $((SECONDS - start)) s"
    done
  fi
  for spec in "$@"; do
    ln -sfn "$out/${spec%%=*}" "$bin/${spec%%=*}"
  done
}

k8s_minor=${KUBERNETES_VERSION#v1.}; k8s_minor=${k8s_minor%%.*}
k8s_ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$k8s_minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z \
 -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION \
 -X k8s.io/client-go/pkg/version.gitMajor=1 \
 -X k8s.io/client-go/pkg/version.gitMinor=$k8s_minor"

only=${1:-all}
if [ "$only" = all ] || [ "$only" = etcd ]; then
  build etcd "$cache/etcd-$ETCD_VERSION" "-s -w" etcd=go.etcd.io/etcd/server/v3
fi
if [ "$only" = all ] || [ "$only" = kubernetes ]; then
  build kubernetes "$cache/kubernetes-$KUBERNETES_VERSION" "$k8s_ldflags" \
    kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
    kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
    kubectl=k8s.io/kubernetes/cmd/kubectl
fi
# The node's components (hack/node/): only on request, the default suite needs none of them.
if [ "$only" = node ]; then
  build kubernetes "$cache/kubernetes-$KUBERNETES_VERSION" "$k8s_ldflags" \
    kubelet=k8s.io/kubernetes/cmd/kubelet \
    kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
    kube-proxy=k8s.io/kubernetes/cmd/kube-proxy
fi
# kubeadm for the kind node image (hack/kind/build.sh): only on request, with the same stamps, since its
# version checks compare its own version with the kubelet's and the control plane's.
if [ "$only" = kubeadm ]; then
  build kubernetes "$cache/kubernetes-$KUBERNETES_VERSION" "$k8s_ldflags" \
    kubeadm=k8s.io/kubernetes/cmd/kubeadm
fi
if [ "$only" = all ] || [ "$only" = helm ]; then
  build helm "$cache/helm-$HELM_VERSION" \
    "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    helm=helm.sh/helm/v3/cmd/helm
fi
say "tools ready in $bin"
