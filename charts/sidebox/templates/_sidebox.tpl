{{/*
sidebox library chart: named templates that add the sidebox sidecar to the
pods of the chart that includes them. Every template takes the including
chart's root context (.) and reads the `sidebox:` block of its values, whose
defaults come from this library's values.yaml.

  sidebox.initContainers  list items for spec.initContainers (migrations, and
                          the native sidecar); may be empty
  sidebox.containers      list items for spec.containers (the classic
                          sidecar); may be empty
  sidebox.volumes         list items for spec.volumes; may be empty
  sidebox.podAnnotations  map entries for the pod's metadata.annotations
  sidebox.container       the sidecar container itself, as one list item
  sidebox.mode            "native" or "classic", as resolved for the cluster
  sidebox.enabled         "true" or empty
*/}}

{{- define "sidebox.enabled" -}}
{{- $s := required "the sidebox library's values are missing: add the library chart as a dependency named sidebox" .Values.sidebox -}}
{{- if ne (toString $s.enabled) "false" -}}true{{- end -}}
{{- end -}}

{{- define "sidebox.mode" -}}
{{- $mode := .Values.sidebox.mode | default "auto" -}}
{{- if eq $mode "auto" -}}
{{- if semverCompare ">=1.29-0" .Capabilities.KubeVersion.Version -}}native{{- else -}}classic{{- end -}}
{{- else if or (eq $mode "native") (eq $mode "classic") -}}
{{- $mode -}}
{{- else -}}
{{- fail (printf "sidebox.mode must be auto, native or classic, got %q" $mode) -}}
{{- end -}}
{{- end -}}

{{- define "sidebox.image" -}}
{{- $i := .Values.sidebox.image -}}
{{- $repo := required "sidebox.image.repository is required" $i.repository -}}
{{- if $i.digest -}}
{{- printf "%s@%s" $repo $i.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (required "sidebox.image.tag (or sidebox.image.digest) is required" $i.tag) -}}
{{- end -}}
{{- end -}}

{{- define "sidebox.port" -}}
{{- .Values.sidebox.httpPort | default 9719 | int -}}
{{- end -}}

{{- define "sidebox.databaseEnv" -}}
{{- $db := .Values.sidebox.database -}}
- name: SIDEBOX_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "sidebox.database.secretName is required: the name of the Secret holding the PostgreSQL URL" $db.secretName | quote }}
      key: {{ $db.secretKey | default "url" | quote }}
{{- end -}}

{{- define "sidebox.logEnv" -}}
- name: SIDEBOX_LOG_LEVEL
  value: {{ .Values.sidebox.logLevel | default "info" | quote }}
- name: SIDEBOX_LOG_FORMAT
  value: {{ .Values.sidebox.logFormat | default "json" | quote }}
{{- end -}}

{{- define "sidebox.env" -}}
{{- $s := .Values.sidebox -}}
{{- $cmd := $s.command | default "run" -}}
{{- include "sidebox.databaseEnv" . }}
- name: SIDEBOX_AMQP_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "sidebox.amqp.secretName is required: the name of the Secret holding the RabbitMQ URL" $s.amqp.secretName | quote }}
      key: {{ $s.amqp.secretKey | default "url" | quote }}
{{- if ne $cmd "inbox" }}
- name: SIDEBOX_OUTBOX_TABLE
  value: {{ $s.outbox.table | default "outbox" | quote }}
{{- end }}
{{- if $s.inbox.queue }}
- name: SIDEBOX_INBOX_QUEUE
  value: {{ $s.inbox.queue | quote }}
- name: SIDEBOX_INBOX_TABLE
  value: {{ $s.inbox.table | default "inbox" | quote }}
{{- else if eq $cmd "inbox" }}
{{- fail "sidebox.inbox.queue is required when sidebox.command is inbox" }}
{{- end }}
- name: SIDEBOX_HTTP_ADDR
  value: {{ printf ":%s" (include "sidebox.port" .) | quote }}
{{ include "sidebox.logEnv" . }}
{{- with $s.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "sidebox.securityContext" -}}
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

{{- define "sidebox.container" -}}
{{- $s := .Values.sidebox -}}
{{- $port := include "sidebox.port" . | int -}}
- name: sidebox
  image: {{ include "sidebox.image" . | quote }}
  imagePullPolicy: {{ $s.image.pullPolicy | default "IfNotPresent" }}
  args:
    - {{ $s.command | default "run" | quote }}
  {{- if eq (include "sidebox.mode" .) "native" }}
  restartPolicy: Always
  {{- end }}
  ports:
    - name: metrics
      containerPort: {{ $port }}
      protocol: TCP
  env:
    {{- include "sidebox.env" . | nindent 4 }}
  startupProbe:
    httpGet:
      path: /healthz
      port: {{ $port }}
    periodSeconds: 1
    timeoutSeconds: 1
    successThreshold: 1
    failureThreshold: 30
  livenessProbe:
    httpGet:
      path: /healthz
      port: {{ $port }}
    periodSeconds: 10
    timeoutSeconds: 1
    successThreshold: 1
    failureThreshold: 3
  {{- if ne (toString $s.probes.readiness) "false" }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: {{ $port }}
    periodSeconds: 5
    timeoutSeconds: 1
    successThreshold: 1
    failureThreshold: 3
  {{- end }}
  {{- with $s.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- include "sidebox.securityContext" . | nindent 4 }}
  terminationMessagePolicy: FallbackToLogsOnError
  {{- with $s.extraVolumeMounts }}
  volumeMounts:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{- define "sidebox.migrateContainer" -}}
{{- $s := .Values.sidebox -}}
- name: sidebox-migrate
  image: {{ include "sidebox.image" . | quote }}
  imagePullPolicy: {{ $s.image.pullPolicy | default "IfNotPresent" }}
  args:
    - migrate
    - up
  env:
    {{- include "sidebox.databaseEnv" . | nindent 4 }}
    - name: SIDEBOX_OUTBOX_TABLE
      value: {{ $s.outbox.table | default "outbox" | quote }}
    - name: SIDEBOX_INBOX_TABLE
      value: {{ $s.inbox.table | default "inbox" | quote }}
    {{- include "sidebox.logEnv" . | nindent 4 }}
  {{- with $s.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- include "sidebox.securityContext" . | nindent 4 }}
  terminationMessagePolicy: FallbackToLogsOnError
{{- end -}}

{{- define "sidebox.initContainers" -}}
{{- if include "sidebox.enabled" . -}}
{{- $items := list -}}
{{- if .Values.sidebox.migrate.enabled -}}
{{- $items = append $items (include "sidebox.migrateContainer" .) -}}
{{- end -}}
{{- if eq (include "sidebox.mode" .) "native" -}}
{{- $items = append $items (include "sidebox.container" .) -}}
{{- end -}}
{{- join "\n" $items -}}
{{- end -}}
{{- end -}}

{{- define "sidebox.containers" -}}
{{- if and (include "sidebox.enabled" .) (eq (include "sidebox.mode" .) "classic") -}}
{{ include "sidebox.container" . }}
{{- end -}}
{{- end -}}

{{- define "sidebox.volumes" -}}
{{- if include "sidebox.enabled" . -}}
{{- with .Values.sidebox.extraVolumes -}}
{{ toYaml . }}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sidebox.podAnnotations" -}}
{{- if and (include "sidebox.enabled" .) .Values.sidebox.metrics.podAnnotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ include "sidebox.port" . | quote }}
prometheus.io/path: /metrics
{{- end -}}
{{- end -}}
