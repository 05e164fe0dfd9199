{{/*
Names.
*/}}
{{- define "weightstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "weightstream.fullname" -}}
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

{{/*
A scalar as a string: numbers print as integers (values arrive as float64 from files and
int64 from --set), strings as they are.
*/}}
{{- define "weightstream.scalar" -}}
{{- if kindIs "string" . }}{{ . }}{{ else if kindIs "bool" . }}{{ . }}{{ else }}{{ int64 . }}{{ end }}
{{- end }}

{{- define "weightstream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "weightstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "weightstream.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Labels: the standard app.kubernetes.io/* set. Selector labels never change across
upgrades (a DaemonSet selector is immutable).
*/}}
{{- define "weightstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "weightstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "weightstream.labels" -}}
helm.sh/chart: {{ include "weightstream.chart" . }}
{{ include "weightstream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: weightstream
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "weightstream.daemonSelectorLabels" -}}
{{ include "weightstream.selectorLabels" . }}
app.kubernetes.io/component: node-cache
{{- end }}

{{/*
Image reference: repository:tag, or repository:tag@digest when a digest is set.
*/}}
{{- define "weightstream.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
Cache paths. The host path is mounted at the same path in every container, so one value
gives the cache root, the socket path and the mount path everywhere.
*/}}
{{- define "weightstream.cacheRoot" -}}
{{- .Values.cache.hostPath }}
{{- end }}

{{- define "weightstream.socketPath" -}}
{{- printf "%s/daemon.sock" .Values.cache.hostPath }}
{{- end }}

{{/*
The daemon's S3 endpoint: "true" when it is served (daemon.s3.enabled, or the presets'
stream-through-cache mode, which needs it), and the URL model pods reach it at (the
node-local Service, docs/sidecar.md "Reaching the node's daemon from a pod").
*/}}
{{- define "weightstream.s3Enabled" -}}
{{- if or .Values.daemon.s3.enabled (and .Values.kserve.llmPreset.enabled .Values.kserve.llmPreset.streamThroughCache.enabled) }}true{{ end }}
{{- end }}

{{- define "weightstream.s3ServiceName" -}}
{{- printf "%s-s3" (include "weightstream.fullname" . | trunc 60 | trimSuffix "-") }}
{{- end }}

{{- define "weightstream.s3Url" -}}
{{- printf "http://%s.%s.svc:%d" (include "weightstream.s3ServiceName" .) .Release.Namespace (int .Values.daemon.s3.port) }}
{{- end }}

{{/*
Name of the hostPath volume in model pods (the preset, the ClusterStorageContainer with
nodeCache, and the examples must agree on it).
*/}}
{{- define "weightstream.cacheVolumeName" -}}
weightstream-cache
{{- end }}

{{- define "weightstream.cacheVolume" -}}
- name: {{ include "weightstream.cacheVolumeName" . }}
  hostPath:
    path: {{ include "weightstream.cacheRoot" . }}
    type: DirectoryOrCreate
{{- end }}

{{/*
Read-only mount of the cache for model pods. Read-only still lets the init container
connect to the daemon's socket: connect(2) on a unix socket is not a write to the
filesystem (EROFS applies to regular files, directories and symlinks only).
*/}}
{{- define "weightstream.cacheMountReadOnly" -}}
- name: {{ include "weightstream.cacheVolumeName" . }}
  mountPath: {{ include "weightstream.cacheRoot" . }}
  readOnly: true
{{- end }}

{{/*
Environment of the storage initializer (docs/interfaces.md). `nodeCache` adds the socket
and the lease holder id.
*/}}
{{- define "weightstream.initEnv" -}}
{{- $v := .root.Values.initContainer }}
{{- if .nodeCache }}
- name: WEIGHTSTREAM_CACHE_SOCKET
  value: {{ include "weightstream.socketPath" .root | quote }}
- name: WEIGHTSTREAM_CACHE_MODE
  value: {{ $v.cacheMode | quote }}
{{- end }}
- name: WEIGHTSTREAM_POD_UID
  valueFrom:
    fieldRef:
      fieldPath: metadata.uid
- name: WEIGHTSTREAM_MODE
  value: {{ default $v.mode .mode | quote }}
{{- if eq (default $v.mode .mode) "stream-through" }}
# Written into the AWS config file next to the scoped credentials (docs/initcontainer.md).
- name: WEIGHTSTREAM_S3_ENDPOINT
  value: {{ include "weightstream.s3Url" .root | quote }}
- name: WEIGHTSTREAM_S3_CREDENTIALS_MODE
  value: {{ ternary "0640" "0600" (gt (int (default 0 .fsGroup)) 0) | quote }}
{{- end }}
{{- include "weightstream.transferEnv" $v.transfer }}
- name: WEIGHTSTREAM_LOG_FORMAT
  value: {{ .root.Values.logFormat | quote }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
WEIGHTSTREAM_CONCURRENCY / _CHUNK_SIZE / _MAX_MEMORY as env entries, for the keys set in
a `transfer` map (unset keys keep the library's defaults).
*/}}
{{- define "weightstream.transferEnv" -}}
{{- range $key, $env := dict "concurrency" "WEIGHTSTREAM_CONCURRENCY" "chunkSize" "WEIGHTSTREAM_CHUNK_SIZE" "maxMemory" "WEIGHTSTREAM_MAX_MEMORY" }}
{{- if hasKey $ $key }}
- name: {{ $env }}
  value: {{ include "weightstream.scalar" (index $ $key) | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Security context of the storage initializer: same user as the daemon's image, no
privileges. The root filesystem stays writable because KServe's credential helpers and
some SDKs write under $HOME.
*/}}
{{- define "weightstream.initSecurityContext" -}}
allowPrivilegeEscalation: false
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The Secret holding the peers' cluster secret (an existing one, or the chart's). */}}
{{- define "weightstream.peerSecretName" -}}
{{- default (printf "%s-peer-secret" (include "weightstream.fullname" .)) .Values.peers.secret.existingSecret }}
{{- end }}
