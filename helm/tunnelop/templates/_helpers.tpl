{{/*
Names, labels and the few values derived from others. Every template takes its names from
here, so that the webhook configurations, the Service and the operator's flags agree.
*/}}

{{- define "tunnelop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name alone when it contains the chart's name. */}}
{{- define "tunnelop.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tunnelop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object of the release. */}}
{{- define "tunnelop.commonLabels" -}}
helm.sh/chart: {{ include "tunnelop.chart" . }}
app.kubernetes.io/name: {{ include "tunnelop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tunnelop
{{- end }}

{{/* Labels of the operator's own objects (its Deployment, Services, RBAC, ...). */}}
{{- define "tunnelop.labels" -}}
{{ include "tunnelop.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator pods' labels that never change (the Deployment's selector is immutable). */}}
{{- define "tunnelop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tunnelop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "tunnelop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tunnelop.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "tunnelop.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The frpc of InCluster tunnels: what the operator runs and its admission policy allows
(the default is contract/naming.py's DEFAULT_FRPC_IMAGE; a test keeps them equal). */}}
{{- define "tunnelop.frpcImage" -}}
{{- .Values.clientImages.frpc | default "docker.io/fatedier/frpc:v0.71.0" }}
{{- end }}

{{- define "tunnelop.relayNamespace" -}}
{{- .Values.relayNamespace.name }}
{{- end }}

{{/* The name the operator registers its admission webhooks under (manager.py). */}}
{{- define "tunnelop.webhookConfigurationName" -}}
tunnelop.dev
{{- end }}

{{/* The MutatingAdmissionPolicy and its binding that set the finalizer on new Tunnels, named
as the webhook they replace (contract/naming.py FINALIZER_POLICY). */}}
{{- define "tunnelop.finalizerPolicyName" -}}
{{- printf "add-finalizer.%s" (include "tunnelop.webhookConfigurationName" .) }}
{{- end }}

{{/* "true" when the API server sets the finalizer by that policy (finalizer.mode policy, or
auto where it serves MutatingAdmissionPolicy v1); else the mutating webhook add-finalizer. */}}
{{- define "tunnelop.finalizerPolicy" -}}
{{- if or (eq .Values.finalizer.mode "policy") (and (eq .Values.finalizer.mode "auto") (.Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy")) -}}
true
{{- end }}
{{- end }}

{{- define "tunnelop.webhookServiceName" -}}
{{- printf "%s-webhook" (include "tunnelop.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tunnelop.metricsServiceName" -}}
{{- printf "%s-metrics" (include "tunnelop.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tunnelop.certSecretName" -}}
{{- default (printf "%s-webhook-cert" (include "tunnelop.fullname" .)) .Values.webhook.certSecretName | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tunnelop.certificateName" -}}
{{- printf "%s-webhook" (include "tunnelop.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The webhooks' namespaceSelector: the value, else all but kube-system and the release's. */}}
{{- define "tunnelop.webhookNamespaceSelector" -}}
{{- if .Values.webhook.namespaceSelector }}
{{- toYaml .Values.webhook.namespaceSelector }}
{{- else }}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values:
      - kube-system
      - {{ .Release.Namespace }}
{{- end }}
{{- end }}

{{/* cert-manager's CA injection, for both webhook configurations. */}}
{{- define "tunnelop.webhookAnnotations" -}}
{{- if .Values.certManager.enabled }}
annotations:
  cert-manager.io/inject-ca-from: {{ .Release.Namespace }}/{{ include "tunnelop.certificateName" . }}
{{- end }}
{{- end }}

{{/* Where the API server sends one webhook's calls: the webhook Service, path /<handler id>. */}}
{{- define "tunnelop.webhookClientConfig" -}}
{{- $root := index . 0 -}}
{{- $id := index . 1 -}}
clientConfig:
  service:
    name: {{ include "tunnelop.webhookServiceName" $root }}
    namespace: {{ $root.Release.Namespace }}
    path: /{{ $id }}
    port: 443
{{- end }}

{{/* The operator's health, readiness and metrics port; the webhook's container port. */}}
{{- define "tunnelop.healthPort" -}}8081{{- end }}
{{- define "tunnelop.webhookPort" -}}9443{{- end }}
{{/* The relay agent's health and metrics port (contract/naming.py AGENT_HEALTH_PORT). */}}
{{- define "tunnelop.agentHealthPort" -}}7401{{- end }}

{{/* Checks across values that values.schema.json cannot express; each names the value. */}}
{{- define "tunnelop.validate" -}}
{{- $span := splitList "-" .Values.serviceNodePortRange }}
{{- $low := index $span 0 | int }}
{{- $high := index $span 1 | int }}
{{- if or (lt $low 1) (gt $high 65535) (ge $low $high) }}
{{- fail (printf "serviceNodePortRange %q: must be LOW-HIGH with 1 <= LOW < HIGH <= 65535" .Values.serviceNodePortRange) }}
{{- end }}
{{- $minAvailable := .Values.podDisruptionBudget.minAvailable }}
{{- if and .Values.podDisruptionBudget.enabled (gt (int .Values.replicas) 1) (not (kindIs "string" $minAvailable)) (ge (int $minAvailable) (int .Values.replicas)) }}
{{- fail (printf "podDisruptionBudget.minAvailable %v: must be less than replicas (%v), or no node could ever be drained" $minAvailable .Values.replicas) }}
{{- end }}
{{- if and .Values.certManager.issuerRef (not .Values.certManager.issuerRef.name) }}
{{- fail "certManager.issuerRef.name: required when certManager.issuerRef is set" }}
{{- end }}
{{- end }}
