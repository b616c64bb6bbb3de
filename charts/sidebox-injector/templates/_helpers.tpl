{{- define "sidebox-injector.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sidebox-injector.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sidebox-injector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sidebox-injector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sidebox-injector.labels" -}}
{{ include "sidebox-injector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: admission-webhook
app.kubernetes.io/part-of: sidebox
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* imageRef renders repository:tag or repository@digest of a dict with those keys. */}}
{{- define "sidebox-injector.imageRef" -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository (required "an image tag (or digest) is required" .tag) -}}
{{- end -}}
{{- end -}}

{{- define "sidebox-injector.image" -}}
{{- include "sidebox-injector.imageRef" .Values.image -}}
{{- end -}}

{{- define "sidebox-injector.sidecarImage" -}}
{{- $i := .Values.sidecarImage | default dict -}}
{{- $repo := $i.repository | default .Values.image.repository -}}
{{- if or $i.tag $i.digest -}}
{{- include "sidebox-injector.imageRef" (dict "repository" $repo "tag" $i.tag "digest" $i.digest) -}}
{{- else -}}
{{- include "sidebox-injector.imageRef" (dict "repository" $repo "tag" .Values.image.tag "digest" .Values.image.digest) -}}
{{- end -}}
{{- end -}}

{{- define "sidebox-injector.tlsSecretName" -}}
{{- if .Values.tls.certManager.enabled -}}
{{- printf "%s-tls" (include "sidebox-injector.fullname" .) -}}
{{- else -}}
{{- required "tls.secretName is required when tls.certManager.enabled is false: an existing kubernetes.io/tls Secret for the webhook Service" .Values.tls.secretName -}}
{{- end -}}
{{- end -}}

{{- define "sidebox-injector.securityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "sidebox-injector.sidecarMode" -}}
{{- $mode := .Values.sidecarMode | default "auto" -}}
{{- if eq $mode "auto" -}}
{{- if semverCompare ">=1.29-0" .Capabilities.KubeVersion.Version -}}native{{- else -}}classic{{- end -}}
{{- else -}}
{{- $mode -}}
{{- end -}}
{{- end -}}
