{{/* Names and labels. */}}
{{- define "modelworks.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelworks.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The gateways' Pods. The migration Job's Pods carry component: migration, so that no selector of the
gateways (Service, PodDisruptionBudget, NetworkPolicy) takes them in. */}}
{{- define "modelworks.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelworks.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "modelworks.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "modelworks.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "modelworks.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "modelworks.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "modelworks.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The grace period Kubernetes gives a stopping Pod: preStop, then the drain, then 30 s to end cut streams with
an error event, flush usage and audit, and exit. */}}
{{- define "modelworks.gracePeriod" -}}
{{- add (int .Values.drain.preStopSeconds) (int (ceil .Values.drain.timeoutSeconds)) 30 -}}
{{- end -}}

{{/* The container security context shared by the gateways and the migration Job: any UID works (group 0 owns
what the image writes). */}}
{{- define "modelworks.securityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The database URL (the gateways' or the migration Job's). */}}
{{- define "modelworks.databaseEnv" -}}
- name: MODELWORKS__DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
{{- end -}}
