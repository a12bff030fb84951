{{/*
Names and labels shared by every template. A Kubernetes name or label value is
at most 63 characters: names are cut there, and a "-" left at the cut removed.
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "watchdogd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The objects' name: fullnameOverride, else RELEASE-NAME, or just RELEASE when
the release's name already holds the chart's ("helm install watchdogd ...").
*/}}
{{- define "watchdogd.fullname" -}}
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

{{/* A name derived from the full name, e.g. "tokens": cut to 63 characters too. */}}
{{- define "watchdogd.tokensSecret" -}}
{{- if .Values.tokens.existingSecret }}
{{- .Values.tokens.existingSecret }}
{{- else }}
{{- printf "%s-tokens" (include "watchdogd.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "watchdogd.stateClaim" -}}
{{- printf "%s-state" (include "watchdogd.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* helm.sh/chart: NAME-VERSION, a "+" of a build's version made a label's "_". */}}
{{- define "watchdogd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* What the Deployment selects its pods by: never changes for a release. */}}
{{- define "watchdogd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "watchdogd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "watchdogd.labels" -}}
helm.sh/chart: {{ include "watchdogd.chart" . }}
{{ include "watchdogd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The PodDisruptionBudget: "auto" makes one when more than one replica runs (one
replica with a budget would block every node drain); true or false decide.
*/}}
{{- define "watchdogd.pdbEnabled" -}}
{{- $enabled := toString .Values.podDisruptionBudget.enabled }}
{{- if or (eq $enabled "true") (and (eq $enabled "auto") (gt (int .Values.replicaCount) 1)) }}true{{ end }}
{{- end }}
