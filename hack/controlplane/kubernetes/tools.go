//go:build tools

// Package tools pins the Kubernetes commands this module builds.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
	// The node (`make node`, hack/node/): kubelet, scheduler and Service routing.
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	// The kind node image (hack/kind/build.sh): kubeadm, next to kubelet and kubectl.
	_ "k8s.io/kubernetes/cmd/kubeadm"
)
