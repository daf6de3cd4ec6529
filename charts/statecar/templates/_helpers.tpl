{{/*
Names. Namespaced objects have fixed names, the ones the operator's flags default to (and the
sidecars' control-plane address statecar-operator.<namespace>.svc:6500), so there is one
statecar per namespace. Cluster-scoped objects carry the release name and namespace, so two
installs never share one.
*/}}
{{- define "statecar.operatorName" -}}statecar-operator{{- end }}
{{- define "statecar.operatorService" -}}statecar-operator{{- end }}
{{- define "statecar.webhookService" -}}statecar-webhook{{- end }}
{{- define "statecar.webhookSecret" -}}statecar-webhook-tls{{- end }}
{{- define "statecar.leaseName" -}}statecar-operator{{- end }}
{{- define "statecar.serviceAccount" -}}statecar-operator{{- end }}
{{- define "statecar.certificate" -}}statecar-webhook{{- end }}

{{- define "statecar.clusterPrefix" -}}
{{- printf "%s-%s" .Release.Name .Release.Namespace | trunc 200 | trimSuffix "-" -}}
{{- end }}
{{- define "statecar.clusterRole" -}}{{ include "statecar.clusterPrefix" . }}-operator{{- end }}
{{- define "statecar.mutatingWebhook" -}}{{ include "statecar.clusterPrefix" . }}-injector{{- end }}
{{- define "statecar.validatingWebhook" -}}{{ include "statecar.clusterPrefix" . }}-validator{{- end }}

{{/* Labels every object carries. */}}
{{- define "statecar.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: statecar
{{- end }}

{{/* The operator pods: selector labels (never change them on upgrade) and all labels. */}}
{{- define "statecar.operatorSelector" -}}
app.kubernetes.io/name: statecar-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
{{- define "statecar.operatorLabels" -}}
{{ include "statecar.labels" . }}
app.kubernetes.io/name: statecar-operator
app.kubernetes.io/component: operator
{{- end }}

{{- define "statecar.image" -}}
{{- $tag := toString (default .root.Chart.AppVersion .image.tag) -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end }}

{{/*
Namespaces the webhooks see: all but the release's own and kube-system (namespaces carry
kubernetes.io/metadata.name from Kubernetes 1.21 on), narrowed by webhook.namespaceSelector.
*/}}
{{- define "statecar.namespaceSelector" -}}
{{- with .Values.webhook.namespaceSelector.matchLabels }}
matchLabels:
  {{- toYaml . | nindent 2 }}
{{- end }}
matchExpressions:
- key: kubernetes.io/metadata.name
  operator: NotIn
  values:
  - {{ .Release.Namespace }}
  - kube-system
{{- with .Values.webhook.namespaceSelector.matchExpressions }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Settings the operator cannot honour are refused, not ignored. */}}
{{- define "statecar.validate" -}}
{{- if .Values.watchNamespaces }}
{{- fail "watchNamespaces: the operator watches Components, Secrets and pods in all namespaces and has no setting to narrow that yet; leave watchNamespaces empty (to limit which namespaces get sidecars and Component validation, use webhook.namespaceSelector)" }}
{{- end }}
{{- end }}
