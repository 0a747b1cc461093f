{{/* Chart name. */}}
{{- define "pbo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, unless the release name already holds the chart name. */}}
{{- define "pbo.fullname" -}}
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

{{- define "pbo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pbo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pbo.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "pbo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portkey-budget-operator
{{- end }}

{{- define "pbo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pbo.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the Admin API key: existingSecret, else the chart's own. Fails when neither is given. */}}
{{- define "pbo.secretName" -}}
{{- if .Values.portkey.existingSecret }}
{{- .Values.portkey.existingSecret }}
{{- else if .Values.portkey.apiKey }}
{{- printf "%s-api-key" (include "pbo.fullname" .) }}
{{- else }}
{{- fail "portkey.apiKey or portkey.existingSecret is required: the operator needs a Portkey Admin API key" }}
{{- end }}
{{- end }}

{{/* The operator image. None is published, so the repository must be chosen: fails when it is not. */}}
{{- define "pbo.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- $repository := required (printf "image.repository is required: no portkey-budget-operator image is published. Build it from the project's Dockerfile (docker build -t portkey-budget-operator:%s .), load it into the cluster (kind load docker-image portkey-budget-operator:%s, or minikube image load portkey-budget-operator:%s) or push it to your registry, then set image.repository (and image.tag, default the chart's appVersion %s), e.g. --set image.repository=portkey-budget-operator. See docs/install.md" $tag $tag $tag .Chart.AppVersion) .Values.image.repository }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{- define "pbo.secretKey" -}}
{{- if .Values.portkey.existingSecret }}{{ .Values.portkey.existingSecretKey }}{{ else }}api-key{{ end }}
{{- end }}

{{- define "pbo.leaseName" -}}
{{- include "pbo.fullname" . }}
{{- end }}
