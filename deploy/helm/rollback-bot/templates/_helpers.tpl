{{/* Names and labels shared by every template of the rollback-bot chart. */}}

{{- define "rollback-bot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rollback-bot.fullname" -}}
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

{{- define "rollback-bot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rollback-bot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rollback-bot.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "rollback-bot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "rollback-bot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rollback-bot.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "rollback-bot.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* PostgreSQL when the Secret holds DATABASE_URL; SQLite on the chart's PVC otherwise (one replica only). */}}
{{- define "rollback-bot.sqlite" -}}
{{- if not .Values.database.secretKey }}true{{- end }}
{{- end }}

{{- define "rollback-bot.checks" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.database.secretKey) }}
{{- fail (printf "replicas=%d needs PostgreSQL: SQLite allows one replica only. Put DATABASE_URL (postgresql+psycopg://user@host:5432/db) in the Secret %q and set database.secretKey=DATABASE_URL, or set replicas=1" (int .Values.replicas) .Values.existingSecret) }}
{{- end }}
{{- if not .Values.existingSecret }}
{{- fail "existingSecret is empty: create a Secret with SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET (kubectl create secret generic rollback-bot ...) and set existingSecret to its name" }}
{{- end }}
{{- if not .Values.policy }}
{{- fail "policy is empty: pass the policy file with --set-file policy=policy.yaml" }}
{{- end }}
{{- end }}

{{/* The environment of both the migrate init container and the bot. */}}
{{- define "rollback-bot.env" -}}
{{- range .Values.secretEnv }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.existingSecret }}
      key: {{ .name }}
      {{- if not .required }}
      optional: true
      {{- end }}
{{- end }}
{{- if .Values.database.secretKey }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.existingSecret }}
      key: {{ .Values.database.secretKey }}
{{- else }}
- name: DATABASE_URL
  value: sqlite:////data/rollback-bot.db
{{- end }}
{{- range $name, $value := .Values.env }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
- name: ROLLBACK_REPLICA_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: HOME
  value: /tmp
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
