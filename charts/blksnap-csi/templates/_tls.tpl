{{- /*
blksnap.tls: the TLS material of one render (tls.source helm or
certManager), made once and kept in .Values._tls so that every template of
the render sees the same keys (tls.yaml writes them, the pods' checksums
and the SnapshotMetadataService read them).

Two CAs, so that the one published to backup clients (in the
SnapshotMetadataService) never vouches for a node or the controller:
  node      signs the controller's client certificate (controller.<driverName>)
            and the nodes' server certificates (<node>.node.<driverName>)
  metadata  signs the snapshot-metadata sidecar's server certificate (the
            Service's DNS names)
The CAs are made once and read back with lookup on every upgrade. A leaf
(source helm) is made again only when its names or its CA changed; its
names and CA are kept in an annotation.
*/ -}}
{{- define "blksnap.tls" -}}
{{- if not (hasKey .Values "_tls") }}
{{- $ns := .Release.Namespace }}
{{- $days := int .Values.tls.validityDays }}
{{- $cas := dict }}
{{- range $key, $spec := dict "node" (list (include "blksnap.nodeApiCASecret" $) "node API") "metadata" (list (include "blksnap.metadataCASecret" $) "snapshot metadata") }}
{{- $old := lookup "v1" "Secret" $ns (index $spec 0) }}
{{- if and $old $old.data (index $old.data "tls.crt") (index $old.data "tls.key") }}
{{- $_ := set $cas $key (buildCustomCert (index $old.data "tls.crt") (index $old.data "tls.key")) }}
{{- else }}
{{- $_ := set $cas $key (genCA (printf "%s %s CA" $.Values.driverName (index $spec 1)) $days) }}
{{- end }}
{{- end }}
{{- $leaves := list }}
{{- if eq .Values.tls.source "helm" }}
{{- $want := list
      (list (include "blksnap.controllerTlsSecret" .) "node" (list (printf "controller.%s" .Values.driverName)))
      (list (include "blksnap.metadataTlsSecret" .) "metadata" (include "blksnap.metadataDnsNames" . | fromJsonArray)) }}
{{- if eq .Values.nodeTls.mode "shared" }}
{{- $want = append $want (list (include "blksnap.nodeTlsSecret" .) "node" (include "blksnap.nodeDnsNames" . | fromJsonArray)) }}
{{- end }}
{{- range $want }}
{{- $name := index . 0 }}
{{- $ca := index $cas (index . 1) }}
{{- $dns := index . 2 }}
{{- $stamp := printf "%s %s" ($dns | toJson) ($ca.Cert | sha256sum) }}
{{- $old := lookup "v1" "Secret" $ns $name }}
{{- $leaf := dict "name" $name "stamp" $stamp "ca" ($ca.Cert | b64enc) }}
{{- if and $old $old.metadata.annotations (eq (index $old.metadata.annotations "blksnap.csi.io/issued-for" | default "") $stamp) }}
{{- $_ := set $leaf "crt" (index $old.data "tls.crt") }}
{{- $_ := set $leaf "key" (index $old.data "tls.key") }}
{{- else }}
{{- $cert := genSignedCert (first $dns) nil $dns $days $ca }}
{{- $_ := set $leaf "crt" ($cert.Cert | b64enc) }}
{{- $_ := set $leaf "key" ($cert.Key | b64enc) }}
{{- end }}
{{- $leaves = append $leaves $leaf }}
{{- end }}
{{- end }}
{{- $_ := set .Values "_tls" (dict "cas" $cas "leaves" $leaves) }}
{{- end }}
{{- end }}

{{/* A digest of the certificates the pods mount: a new one restarts them. */}}
{{- define "blksnap.tlsChecksum" -}}
{{- if eq .Values.tls.source "existing" }}
{{- printf "%s/%s/%s" .Values.tls.existing.controller .Values.tls.existing.node .Values.tls.existing.snapshotMetadata | sha256sum }}
{{- else }}
{{- include "blksnap.tls" . }}
{{- $sum := list }}
{{- range .Values._tls.leaves }}{{ $sum = append $sum .crt }}{{ end }}
{{- range $k, $ca := .Values._tls.cas }}{{ $sum = append $sum $ca.Cert }}{{ end }}
{{- $sum | join "," | sha256sum }}
{{- end }}
{{- end }}
