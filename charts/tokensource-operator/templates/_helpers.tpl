{{/* The chart's name. */}}
{{- define "tokensource-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name when it contains the chart's. */}}
{{- define "tokensource-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Labels that select the operator's pods. */}}
{{- define "tokensource-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokensource-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "tokensource-operator.labels" -}}
{{ include "tokensource-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "tokensource-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tokensource-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image: by digest when one is given, else by tag (the appVersion by default). */}}
{{- define "tokensource-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The watched namespace in the namespaced mode. */}}
{{- define "tokensource-operator.watchNamespace" -}}
{{- required "scope.namespace is required when scope.type is Namespace" .Values.scope.namespace }}
{{- end }}

{{/* A ClusterRoleBinding of the operator's ServiceAccount to the ClusterRole `name`. */}}
{{- define "tokensource-operator.clusterBinding" -}}
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ .name }}
  labels:
    {{- include "tokensource-operator.labels" .root | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ .name }}
subjects:
  - kind: ServiceAccount
    name: {{ include "tokensource-operator.serviceAccountName" .root }}
    namespace: {{ .root.Release.Namespace }}
{{- end }}

{{/* A duration such as 1h30m or 500ms (the operator's own format) in milliseconds. */}}
{{- define "tokensource-operator.milliseconds" -}}
{{- $units := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 -}}
{{- $total := 0 -}}
{{- range regexFindAll "[0-9]+(ms|s|m|h)" . -1 -}}
{{- $n := regexFind "^[0-9]+" . -}}
{{- $total = add $total (mul (int64 $n) (get $units (trimPrefix $n .))) -}}
{{- end -}}
{{- $total -}}
{{- end }}

{{/* A RoleBinding in the watched namespace (namespaced mode) or a ClusterRoleBinding. */}}
{{- define "tokensource-operator.binding" -}}
{{- $namespaced := eq .root.Values.scope.type "Namespace" -}}
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ ternary "RoleBinding" "ClusterRoleBinding" $namespaced }}
metadata:
  name: {{ .name }}
  {{- if $namespaced }}
  namespace: {{ include "tokensource-operator.watchNamespace" .root }}
  {{- end }}
  labels:
    {{- include "tokensource-operator.labels" .root | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: {{ ternary "Role" "ClusterRole" $namespaced }}
  name: {{ .name }}
subjects:
  - kind: ServiceAccount
    name: {{ include "tokensource-operator.serviceAccountName" .root }}
    namespace: {{ .root.Release.Namespace }}
{{- end }}
