{{- define "mxn.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mxn.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "mxn.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "mxn.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "mxn.secretName" -}}
{{- .Values.secret.existingSecret | default (include "mxn.fullname" .) -}}
{{- end -}}

{{- define "mxn.databaseUrl" -}}
{{- if .Values.postgresql.enabled -}}
postgresql+asyncpg://mxn:{{ .Values.postgresql.password }}@{{ include "mxn.fullname" . }}-postgresql:5432/mxn
{{- else -}}
{{- required "postgresql.url is required when postgresql.enabled is false" .Values.postgresql.url -}}
{{- end -}}
{{- end -}}

{{- define "mxn.redisUrl" -}}
{{- if .Values.redis.enabled -}}
redis://{{ include "mxn.fullname" . }}-redis:6379/0
{{- else -}}
{{- .Values.redis.url -}}
{{- end -}}
{{- end -}}

{{- define "mxn.rayAddress" -}}
{{- if .Values.ray.head.enabled -}}
ray://{{ include "mxn.fullname" . }}-ray-head:10001
{{- else -}}
{{- .Values.ray.address -}}
{{- end -}}
{{- end -}}
