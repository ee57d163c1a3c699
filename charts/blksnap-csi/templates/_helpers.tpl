{{/* Names, labels and images shared by every template. */}}

{{- define "blksnap.name" -}}
{{- default "blksnap-csi" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "blksnap.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "blksnap.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "blksnap.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Labels of every object. app.kubernetes.io/name stays "blksnap-csi" whatever
nameOverride says: the controller finds the node plugins by it.
*/}}
{{- define "blksnap.labels" -}}
app.kubernetes.io/name: blksnap-csi
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: blksnap-csi
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Selector labels of one component: blksnap.selector (list $ "node"). */}}
{{- define "blksnap.selector" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: blksnap-csi
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Labels of one component's objects: blksnap.componentLabels (list $ "node"). */}}
{{- define "blksnap.componentLabels" -}}
{{ include "blksnap.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
An image reference from images.<key>: repository, then @digest when one is
given, else :tag (empty tag: the chart's appVersion).
*/}}
{{- define "blksnap.image" -}}
{{- $ := index . 0 -}}
{{- $img := index $.Values.images (index . 1) -}}
{{- if $img.digest -}}
{{ $img.repository }}@{{ $img.digest }}
{{- else -}}
{{ $img.repository }}:{{ default $.Chart.AppVersion $img.tag }}
{{- end -}}
{{- end }}

{{/* image: and imagePullPolicy: lines of a container. */}}
{{- define "blksnap.imageLines" -}}
image: {{ include "blksnap.image" . | quote }}
imagePullPolicy: {{ (index (index . 0).Values.images (index . 1)).pullPolicy }}
{{- end }}

{{- define "blksnap.controllerSA" -}}{{ include "blksnap.fullname" . }}-controller{{- end }}
{{- define "blksnap.nodeSA" -}}{{ include "blksnap.fullname" . }}-node{{- end }}

{{/* Secret names of the TLS material (see tls.yaml). */}}
{{- define "blksnap.nodeApiCASecret" -}}{{ include "blksnap.fullname" . }}-node-api-ca{{- end }}
{{- define "blksnap.metadataCASecret" -}}{{ include "blksnap.fullname" . }}-snapshot-metadata-ca{{- end }}
{{- define "blksnap.controllerTlsSecret" -}}
{{- if eq .Values.tls.source "existing" }}{{ .Values.tls.existing.controller }}{{ else }}{{ include "blksnap.fullname" . }}-controller-tls{{ end }}
{{- end }}
{{- define "blksnap.nodeTlsSecret" -}}
{{- if eq .Values.tls.source "existing" }}{{ .Values.tls.existing.node }}{{ else }}{{ include "blksnap.fullname" . }}-node-tls{{ end }}
{{- end }}
{{- define "blksnap.metadataTlsSecret" -}}
{{- if eq .Values.tls.source "existing" }}{{ .Values.tls.existing.snapshotMetadata }}{{ else }}{{ include "blksnap.fullname" . }}-snapshot-metadata-tls{{ end }}
{{- end }}

{{- define "blksnap.metadataService" -}}{{ include "blksnap.fullname" . }}-snapshot-metadata{{- end }}

{{/* DNS names of the snapshot-metadata Service, for its certificate. */}}
{{- define "blksnap.metadataDnsNames" -}}
{{- $svc := include "blksnap.metadataService" . -}}
{{- list $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) | toJson }}
{{- end }}

{{/*
DNS names of the shared node-API certificate (nodeTls.mode shared): the
wildcard covers node names of one DNS label; a name with dots needs its own
entry, taken from the cluster's Nodes at install/upgrade and from
nodeTls.extraNodeNames.
*/}}
{{- define "blksnap.nodeDnsNames" -}}
{{- $names := list (printf "*.node.%s" .Values.driverName) -}}
{{- $nodes := list -}}
{{- range (lookup "v1" "Node" "" "").items | default list }}
{{- $nodes = append $nodes .metadata.name }}
{{- end }}
{{- range concat $nodes .Values.nodeTls.extraNodeNames | uniq | sortAlpha }}
{{- if contains "." . }}
{{- $names = append $names (printf "%s.node.%s" . $.Values.driverName) }}
{{- end }}
{{- end }}
{{- $names | toJson }}
{{- end }}

{{/* The audience backup clients ask their tokens for. */}}
{{- define "blksnap.audience" -}}{{ default .Values.driverName .Values.snapshotMetadata.audience }}{{- end }}

{{/* Leader election flags of the sidecars. */}}
{{- define "blksnap.leaderElection" -}}
- --leader-election
- --leader-election-namespace=$(NAMESPACE)
- --leader-election-lease-duration={{ .Values.controller.leaseDuration }}
- --leader-election-renew-deadline={{ .Values.controller.renewDeadline }}
- --leader-election-retry-period={{ .Values.controller.retryPeriod }}
{{- end }}

{{/* Security context of a container that needs no privilege at all. */}}
{{- define "blksnap.restricted" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}

{{/* node.module.params as the loader reads them: NAME=VALUE, space-separated. */}}
{{- define "blksnap.moduleParams" -}}
{{- $p := list }}
{{- range $name, $value := .Values.node.module.params }}
{{- $p = append $p (printf "%s=%v" $name $value) }}
{{- end }}
{{- join " " $p }}
{{- end }}
