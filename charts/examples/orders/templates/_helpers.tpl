{{- define "orders.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "orders.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "orders.labels" -}}
{{ include "orders.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/*
orders.podSpec: the pod of the Deployment and of the Job, with the sidebox
sidecar from the library chart. Takes a dict: root (the chart's context),
component, count, rate, restartPolicy.
*/}}
{{- define "orders.podTemplate" -}}
{{- $root := .root -}}
metadata:
  labels:
    {{- include "orders.selectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
  {{- $annotations := include "sidebox.podAnnotations" $root | fromYaml | merge (deepCopy $root.Values.podAnnotations) }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  restartPolicy: {{ .restartPolicy }}
  automountServiceAccountToken: false
  # The sidecar drains its batches in flight on SIGTERM
  # (SIDEBOX_SHUTDOWN_TIMEOUT, 30s by default): leave it the time.
  terminationGracePeriodSeconds: 45
  securityContext:
    runAsNonRoot: true
    seccompProfile:
      type: RuntimeDefault
  {{- with include "sidebox.initContainers" $root }}
  initContainers:
    {{- . | nindent 4 }}
  {{- end }}
  containers:
    - name: orders
      image: "{{ $root.Values.image.repository }}:{{ $root.Values.image.tag }}"
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      env:
        - name: ORDERS_DATABASE_URL
          valueFrom:
            secretKeyRef:
              name: {{ $root.Values.sidebox.database.secretName | quote }}
              key: {{ $root.Values.sidebox.database.secretKey | quote }}
        - name: ORDERS_OUTBOX_TABLE
          value: {{ $root.Values.sidebox.outbox.table | quote }}
        - name: ORDERS_EXCHANGE
          value: {{ $root.Values.orders.exchange | quote }}
        - name: ORDERS_COUNT
          value: {{ .count | int64 | toString | quote }}
        - name: ORDERS_RATE
          value: {{ .rate | int64 | toString | quote }}
        - name: ORDERS_DECLINE_RATE
          value: {{ $root.Values.orders.declineRate | quote }}
      {{- with $root.Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        runAsNonRoot: true
        readOnlyRootFilesystem: true
        allowPrivilegeEscalation: false
        capabilities:
          drop:
            - ALL
    {{- with include "sidebox.containers" $root }}
    {{- . | nindent 4 }}
    {{- end }}
  {{- with include "sidebox.volumes" $root }}
  volumes:
    {{- . | nindent 4 }}
  {{- end }}
{{- end -}}
