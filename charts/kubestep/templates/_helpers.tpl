{{/* Names ------------------------------------------------------------------------------------- */}}

{{- define "kubestep.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's base name. Leaves room for the longest suffix the chart appends
("-worker-" plus a worker name) within the 63 characters of a label value.
*/}}
{{- define "kubestep.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kubestep.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubestep.operatorName" -}}
{{- printf "%s-operator" (include "kubestep.fullname" .) }}
{{- end }}

{{- define "kubestep.operatorServiceAccount" -}}
{{- default (include "kubestep.operatorName" .) .Values.operator.serviceAccount.name }}
{{- end }}

{{- define "kubestep.workerServiceAccount" -}}
{{- default (printf "%s-worker" (include "kubestep.fullname" .)) .Values.workerServiceAccount.name }}
{{- end }}

{{- define "kubestep.serverName" -}}
{{- printf "%s-server" (include "kubestep.fullname" .) }}
{{- end }}

{{- define "kubestep.serverServiceAccount" -}}
{{- default (include "kubestep.serverName" .) .Values.server.serviceAccount.name }}
{{- end }}

{{/* Cluster-scoped names carry the release namespace: releases in two namespaces must not collide. */}}
{{- define "kubestep.clusterRoleName" -}}
{{- printf "%s-%s-operator" .Release.Namespace (include "kubestep.fullname" .) }}
{{- end }}

{{/* Labels ------------------------------------------------------------------------------------ */}}

{{- define "kubestep.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubestep.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kubestep.labels" -}}
helm.sh/chart: {{ include "kubestep.chart" . }}
{{ include "kubestep.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubestep
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Images ------------------------------------------------------------------------------------ */}}

{{/* Usage: include "kubestep.image" (list $ .Values.operator.image) */}}
{{- define "kubestep.image" -}}
{{- $root := index . 0 }}
{{- $override := index . 1 | default dict }}
{{- $repository := $override.repository | default $root.Values.image.repository }}
{{- $tag := $override.tag | default $root.Values.image.tag | default $root.Chart.AppVersion }}
{{- printf "%s:%v" $repository $tag }}
{{- end }}

{{- define "kubestep.imagePullPolicy" -}}
{{- $root := index . 0 }}
{{- $override := index . 1 | default dict }}
{{- $override.pullPolicy | default $root.Values.image.pullPolicy }}
{{- end }}

{{/* Namespaces -------------------------------------------------------------------------------- */}}

{{/* The namespaces the operator watches (namespaced mode), as a JSON list. */}}
{{- define "kubestep.watchedNamespaces" -}}
{{- if .Values.watchNamespaces }}
{{- .Values.watchNamespaces | uniq | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/* The namespaces workers run in, as a JSON list (the release namespace when there are none). */}}
{{- define "kubestep.workerNamespaces" -}}
{{- $namespaces := list }}
{{- range .Values.workers }}
{{- $namespaces = append $namespaces (.namespace | default $.Release.Namespace) }}
{{- end }}
{{- if not $namespaces }}
{{- $namespaces = list .Release.Namespace }}
{{- end }}
{{- $namespaces | uniq | toJson }}
{{- end }}

{{/* Pods -------------------------------------------------------------------------------------- */}}

{{/* The pod-level securityContext of every pod: Pod Security "restricted". */}}
{{- define "kubestep.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The container-level securityContext of every container. */}}
{{- define "kubestep.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Checks that fail the render with a clear message rather than deploying
something that cannot work.
*/}}
{{- define "kubestep.validate" -}}
{{- $op := .Values.operator }}
{{- if and (gt (int $op.replicas) 1) (not $op.leaderElection.enabled) }}
{{- fail (printf "operator.replicas is %d: more than one replica needs operator.leaderElection.enabled (or they would all act)" (int $op.replicas)) }}
{{- end }}
{{- if and $op.leaderElection.enabled (ge (float64 $op.leaderElection.renewDeadlineSeconds) (float64 $op.leaderElection.leaseSeconds)) }}
{{- fail "operator.leaderElection.renewDeadlineSeconds must be shorter than leaseSeconds" }}
{{- end }}
{{- $names := dict }}
{{- range .Values.workers }}
{{- if hasKey $names .name }}
{{- fail (printf "workers: the name %q is used twice" .name) }}
{{- end }}
{{- $_ := set $names .name true }}
{{- end }}
{{- if not .Values.watchAllNamespaces }}
{{- $watched := include "kubestep.watchedNamespaces" . | fromJsonArray }}
{{- range .Values.workers }}
{{- $ns := .namespace | default $.Release.Namespace }}
{{- if not (has $ns $watched) }}
{{- fail (printf "workers: worker %q runs in namespace %q, which the operator does not watch (watchNamespaces: %s); add it to watchNamespaces or set watchAllNamespaces: true" .name $ns (toJson $watched)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
flowControl.extraSubjects name people or clients one by one: the apiserver
classifies a request before it authorizes it, so a broad subject would queue
any client with a token, RBAC or not, at the chart's control level. Refuses
wildcards and the groups every user, every unauthenticated client or every
service account (of the cluster or of a namespace) belongs to. The values
schema says the same; this holds with --skip-schema-validation too.
*/}}
{{- define "kubestep.validateFlowSubjects" -}}
{{- $broad := list "system:authenticated" "system:unauthenticated" }}
{{- range $i, $s := .Values.flowControl.extraSubjects }}
{{- $where := printf "flowControl.extraSubjects[%d]" $i }}
{{- $field := dict "User" "user" "Group" "group" "ServiceAccount" "serviceAccount" }}
{{- if not (hasKey $field (toString $s.kind)) }}
{{- fail (printf "%s: kind must be User, Group or ServiceAccount" $where) }}
{{- end }}
{{- $name := (index $s (index $field $s.kind) | default dict).name | default "" | toString }}
{{- if or (not $name) (contains "*" $name) }}
{{- fail (printf "%s: needs the name of one %s, without a wildcard" $where $s.kind) }}
{{- end }}
{{- if and (eq $s.kind "Group") (or (has $name $broad) (eq $name "system:serviceaccounts") (hasPrefix "system:serviceaccounts:" $name)) }}
{{- fail (printf "%s: the group %s is too broad: the apiserver classifies a request before RBAC authorizes it, so every member, allowed to cancel or not, would share the operator's priority level; name the users, groups of people or ServiceAccounts that cancel runs" $where $name) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A worker's effective PodDisruptionBudget settings: the worker's own
podDisruptionBudget keys over the global ones. Usage:
include "kubestep.workerPdb" (list $ $worker) | fromJson
*/}}
{{- define "kubestep.workerPdb" -}}
{{- $root := index . 0 }}
{{- $own := (index . 1).podDisruptionBudget | default dict }}
{{- $pdb := dict }}
{{- range $key := list "enabled" "maxUnavailable" "minAvailable" }}
{{- if hasKey $own $key }}
{{- $_ := set $pdb $key (index $own $key) }}
{{- else if hasKey $root.Values.podDisruptionBudget $key }}
{{- $_ := set $pdb $key (index $root.Values.podDisruptionBudget $key) }}
{{- end }}
{{- end }}
{{- toJson $pdb }}
{{- end }}
