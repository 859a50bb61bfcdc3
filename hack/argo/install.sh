#!/usr/bin/env bash
# Issue 22, step 3: Argo Workflows on the real node of hack/node (`make node`), namespaced, in namespace
# argo: its CRDs and controller from the module's manifests/namespace-install (kustomize, by kubectl),
# with the images of hack/argo/images.sh (imagePullPolicy Never: nothing is pulled), no argo-server (the
# peer needs no API server), and a Role for the steps' ServiceAccount (the executor writes
# WorkflowTaskResults). Then one workflow of three 10 ms steps, to show it runs.
#
#   sudo hack/node/up.sh localhost/kubestep:dev quay.io/argoproj/workflow-controller:v4.0.5 \
#        quay.io/argoproj/argoexec:v4.0.5 localhost/kubestep-python:3.11-bookworm
#   sudo bash hack/argo/install.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=${ARGO_VERSION:-v4.0.5}
SRC=${KUBESTEP_ARGO_CACHE:-$HOME/.cache/kubestep/argo/$VERSION}/src
K=hack/node/kubectl.sh
PY=${PYTHON:-.venv/bin/python}

$K get namespace argo >/dev/null 2>&1 || $K create namespace argo >/dev/null
$K kustomize "$SRC/manifests/namespace-install" | VERSION=$VERSION "$PY" -c '
import os, sys, yaml
version = os.environ["VERSION"]
out = []
for d in yaml.safe_load_all(sys.stdin):
    if not d or (d["kind"] in ("Deployment", "Service") and d["metadata"]["name"].startswith("argo-server")):
        continue
    if d["kind"] == "Deployment" and d["metadata"]["name"] == "workflow-controller":
        c = d["spec"]["template"]["spec"]["containers"][0]
        c["image"], c["imagePullPolicy"] = f"quay.io/argoproj/workflow-controller:{version}", "Never"
        c["args"] = c.get("args", []) + [
            f"--executor-image=quay.io/argoproj/argoexec:{version}", "--executor-image-pull-policy=Never"]
    out.append(d)
yaml.safe_dump_all(out, sys.stdout)
' | $K apply --server-side -n argo -f - >/dev/null
# As YAML, not `kubectl create role --resource=...`: that asks discovery, which may not list Argo's
# CRDs yet right after they are created ("the server doesn't have a resource type").
$K -n argo apply --server-side -f - >/dev/null <<'YAML'
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: executor}
rules:
  - apiGroups: [argoproj.io]
    resources: [workflowtaskresults]
    verbs: [create, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: executor}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: executor}
subjects:
  - {kind: ServiceAccount, name: default, namespace: argo}
YAML
$K wait --for=condition=Established --timeout=60s crd/workflows.argoproj.io >/dev/null
$K -n argo rollout status deploy/workflow-controller --timeout=120s

name=$($K -n argo create -o name -f - <<'YAML'
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata:
  generateName: steps-
spec:
  entrypoint: main
  templates:
    - name: main
      steps:
        - - {name: s0, template: sleep}
        - - {name: s1, template: sleep}
        - - {name: s2, template: sleep}
    - name: sleep
      container:
        image: localhost/kubestep-python:3.11-bookworm
        imagePullPolicy: Never
        command: [sleep, "0.01"]
YAML
)
$K -n argo wait --for=jsonpath='{.status.phase}'=Succeeded "$name" --timeout=180s
$K -n argo get "$name" -o jsonpath='{.status.startedAt} {.status.finishedAt}{"\n"}'
