{{/*
KServe helpers: API checks, the LLMInferenceServiceConfig pod patches and the vLLM flags.

KServe renders every LLMInferenceServiceConfig as a Go template (after merging, over the
service object) before it builds pods. Text meant for that second rendering is written
here with $o / $c (the two delimiters) so Helm prints it unchanged.
*/}}

{{/*
Fail unless the cluster serves `api` (group/version/kind); `value` names the value that
turns the object off.
*/}}
{{- define "weightstream.kserve.requireApi" -}}
{{- if not (.root.Capabilities.APIVersions.Has .api) }}
{{- fail (printf "this cluster does not serve %s, which %s=true renders (%s). Install a KServe version that serves it (docs/chart.md, \"Supported KServe versions\") or set %s=false." .api .value .why .value) }}
{{- end }}
{{- end }}

{{/*
`own` or `merge`: how the presets provide the storage-initializer (values.yaml
kserve.llmPreset.initContainer). `merge` needs KServe v0.20 or newer.
*/}}
{{- define "weightstream.llmInitMode" -}}
{{- $version := .Values.kserve.version }}
{{- $mode := .Values.kserve.llmPreset.initContainer }}
{{- $old := has $version (list "v0.17" "v0.18" "v0.19") }}
{{- if eq $mode "auto" }}
{{- ternary "own" "merge" $old }}
{{- else if and (eq $mode "merge") $old }}
{{- fail (printf "kserve.llmPreset.initContainer=merge needs KServe v0.20 or newer: KServe %s adds its own storage-initializer beside (v0.17, v0.18) or instead of (v0.19) the preset's. Set kserve.llmPreset.initContainer=own (or auto), or kserve.version to the KServe you run." $version) }}
{{- else }}
{{- $mode }}
{{- end }}
{{- end }}

{{/*
The KServe template condition under which runai's `distributed` mode is set: the
service (or, for prefill pods, its prefill section) sets a tensor or pipeline size.
*/}}
{{- define "weightstream.parallelCondition" -}}
{{- if has .role (list "prefill" "prefill-worker") -}}
and .Spec.Prefill .Spec.Prefill.Parallelism (or .Spec.Prefill.Parallelism.Tensor .Spec.Prefill.Parallelism.Pipeline)
{{- else -}}
and .Spec.Parallelism (or .Spec.Parallelism.Tensor .Spec.Parallelism.Pipeline)
{{- end }}
{{- end }}

{{/*
--model-loader-extra-config JSON for the chosen load format, or "" for none.
runai_streamer with `distributed: auto` carries a KServe template condition.
*/}}
{{- define "weightstream.loaderConfigJson" -}}
{{- $o := "{{" }}{{- $c := "}}" }}
{{- $vllm := .root.Values.kserve.llmPreset.vllm }}
{{- if eq $vllm.loadFormat "weightstream" }}
{{- with $vllm.weightstreamLoaderConfig }}{{ toJson . }}{{ end }}
{{- else if eq $vllm.loadFormat "runai_streamer" }}
{{- with $vllm.loaderExtraConfig }}
{{- $auto := and (hasKey . "distributed") (eq (toString (index . "distributed")) "auto") }}
{{- if $auto }}
{{- $rest := toJson (omit . "distributed") }}
{{- $sep := ternary "" "," (eq $rest "{}") }}
{{- /* "{ {{- if" and not "{{{ if": KServe's lexer would read "{{{" as an action */}}
{{- printf "%s %s- if %s %s%s\"distributed\":true%s end %s}" (trimSuffix "}" $rest) $o (include "weightstream.parallelCondition" $) $c $sep $o $c }}
{{- else }}
{{- toJson . }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
vLLM flags as a JSON list of words (unquoted), or "[]".
*/}}
{{- define "weightstream.vllmFlags" -}}
{{- $vllm := .root.Values.kserve.llmPreset.vllm }}
{{- $words := list }}
{{- if $vllm.loadFormat }}
{{- $words = list "--load-format" $vllm.loadFormat }}
{{- $json := include "weightstream.loaderConfigJson" . }}
{{- if $json }}
{{- $words = concat $words (list "--model-loader-extra-config" $json) }}
{{- end }}
{{- end }}
{{- toJson $words }}
{{- end }}

{{/*
true on KServe v0.17, whose single-node, decode and prefill templates run `vllm serve` as
a plain argv (VLLM_ADDITIONAL_ARGS is not read there), while its multi-node templates run
`eval "vllm serve ... ${VLLM_ADDITIONAL_ARGS} $@"`. The same preset patches both (a
multi-node leader is spec.template too), so on v0.17 `main` gets `args: [--load-format,
<format>]`, words that survive both an argv and an eval, besides VLLM_ADDITIONAL_ARGS, and
runai's concurrency and memory limit also as RUNAI_STREAMER_* variables.
*/}}
{{- define "weightstream.argvTemplates" -}}
{{- if eq .Values.kserve.version "v0.17" }}true{{ end }}
{{- end }}

{{/*
Image of `main` for the weightstream load format ("" keeps KServe's).
*/}}
{{- define "weightstream.vllmImage" -}}
{{- $vllm := .Values.kserve.llmPreset.vllm }}
{{- if and (eq $vllm.loadFormat "weightstream") $vllm.image.repository }}
{{- $tag := default .Chart.AppVersion $vllm.image.tag }}
{{- if $vllm.image.digest }}
{{- printf "%s:%s@%s" $vllm.image.repository $tag $vllm.image.digest }}
{{- else }}
{{- printf "%s:%s" $vllm.image.repository $tag }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of the volume at /mnt/models in `own` mode: KServe's own name, so that a service
that turns the initializer back on (v0.20+) gets no second mount at that path.
*/}}
{{- define "weightstream.modelVolumeName" -}}
kserve-provision-location
{{- end }}

{{/*
The pod patch of one role (`decode`, `prefill`, `worker`, `prefill-worker`): KServe merges
it over the well-known template by container name (strategic merge), so it only names
the `storage-initializer` init container and the `main` container.
*/}}
{{- define "weightstream.llmPodPatch" -}}
{{- $root := .root }}
{{- $o := "{{" }}{{- $c := "}}" }}
{{- $own := eq .mode "own" }}
{{- $preset := $root.Values.kserve.llmPreset }}
{{- $flags := include "weightstream.vllmFlags" . | fromJsonArray }}
{{- $argv := include "weightstream.argvTemplates" $root }}
{{- $format := $preset.vllm.loadFormat }}
{{- $env := dict }}
{{- if and $argv (eq $format "runai_streamer") }}
{{- range $key, $name := dict "concurrency" "RUNAI_STREAMER_CONCURRENCY" "memory_limit" "RUNAI_STREAMER_MEMORY_LIMIT" }}
{{- if hasKey $preset.vllm.loaderExtraConfig $key }}
{{- $_ := set $env $name (index $preset.vllm.loaderExtraConfig $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- $env = merge (deepCopy $preset.vllm.streamerEnv) $env }}
{{- $image := include "weightstream.vllmImage" $root }}
{{- $through := $preset.streamThroughCache.enabled }}
{{- $fsGroup := int (default 0 $preset.streamThroughCache.fsGroup) }}
{{- if and $through (ne $format "runai_streamer") }}
{{- fail (printf "kserve.llmPreset.streamThroughCache.enabled=true needs kserve.llmPreset.vllm.loadFormat=runai_streamer (vLLM's loader reads the weights from the node cache's S3 endpoint), got %q" $format) }}
{{- end }}
{{- if $through }}
{{- /* Path-style, a cold range's first byte may wait for the pull, and SlowDown past the
       daemon's connection cap is retried (runai's C++ client and boto3's listing):
       docs/sidecar.md, "runai's settings in the main container". Values may override. */}}
{{- range $name, $value := dict "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING" "0" "RUNAI_STREAMER_S3_REQUEST_TIMEOUT_MS" "600000" "RUNAI_STREAMER_S3_MAX_RETRIES" "30" "AWS_MAX_ATTEMPTS" "30" "AWS_RETRY_MODE" "standard" }}
{{- $_ := set $env $name (default $value (index $env $name)) }}
{{- end }}
{{- end }}
{{- if and $through (gt $fsGroup 0) }}
# Stream-through: the scoped credentials in /mnt/models are 0640, group-owned by this
# fsGroup (KServe's emptyDir takes it), so `main` reads them whatever its UID.
securityContext:
  fsGroup: {{ $fsGroup }}
{{- end }}
initContainers:
  - name: storage-initializer
    image: {{ include "weightstream.image" $root | quote }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    {{- if $own }}
    # KServe renders the model URI (the service's spec.model.uri) into the first argument.
    args:
      - {{ printf "%s .Spec.Model.URI %s" $o $c | quote }}
      - /mnt/models
    terminationMessagePolicy: FallbackToLogsOnError
    {{- with $preset.credentialsSecret }}
    envFrom:
      - secretRef:
          name: {{ . }}
    {{- end }}
    {{- end }}
    env:
      {{- include "weightstream.initEnv" (dict "root" $root "nodeCache" true "mode" (ternary "stream-through" "" $through) "fsGroup" $fsGroup) | trim | nindent 6 }}
    resources:
      {{- toYaml $root.Values.initContainer.resources | nindent 6 }}
    securityContext:
      {{- include "weightstream.initSecurityContext" $root | nindent 6 }}
    volumeMounts:
      {{- include "weightstream.cacheMountReadOnly" $root | nindent 6 }}
      {{- if $own }}
      - name: {{ include "weightstream.modelVolumeName" $root }}
        mountPath: /mnt/models
      {{- end }}
containers:
  - name: main
    {{- with $image }}
    image: {{ . | quote }}
    {{- end }}
    {{- if and $format $argv }}
    # KServe v0.17's single-node templates run `vllm serve /mnt/models ...` as a plain
    # argv and do not read VLLM_ADDITIONAL_ARGS: the load format is appended here.
    args:
      - --load-format
      - {{ $format }}
    {{- end }}
    {{- if or $flags $env $through }}
    env:
      {{- if $through }}
      # Stream-through (docs/chart.md): the init container wrote these files into
      # /mnt/models. The redirect turns `vllm serve /mnt/models` into the model's s3://
      # URI (vLLM 0.33 has no --model-weights flag); runai and boto3 then read config and
      # weights from this node's daemon with the scoped keys.
      - name: VLLM_MODEL_REDIRECT_PATH
        value: /mnt/models/.weightstream/s3/vllm-model-redirect.json
      - name: AWS_SHARED_CREDENTIALS_FILE
        value: /mnt/models/.weightstream/s3/credentials
      - name: AWS_CONFIG_FILE
        value: /mnt/models/.weightstream/s3/config
      # botocore prefers AWS_ENDPOINT_URL_S3 (say, from a Secret in envFrom) over
      # AWS_ENDPOINT_URL: both name this node's daemon, so no listing goes elsewhere.
      - name: AWS_ENDPOINT_URL
        value: {{ include "weightstream.s3Url" $root | quote }}
      - name: AWS_ENDPOINT_URL_S3
        value: {{ include "weightstream.s3Url" $root | quote }}
      - name: AWS_EC2_METADATA_DISABLED
        value: "true"
      # No other AWS credentials may shadow the scoped keys: boto3 and the AWS C++ SDK
      # read the environment's keys (boto3 also IRSA's web identity) before the files.
      # These win over a Secret in envFrom, and the EKS pod identity webhook adds no
      # IRSA variable to a container that defines one; empty reads as unset in both
      # (initcontainer/streamthrough.py MAIN_ENV_OVERRIDES, docs/chart.md). A name
      # without a value is the empty string (EnvVar.value defaults to ""; a v1.20 API
      # server refuses `value: ""` in a custom resource, and Go drops it anyway).
      {{- range (list "AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY" "AWS_SESSION_TOKEN" "AWS_ROLE_ARN" "AWS_WEB_IDENTITY_TOKEN_FILE") }}
      - name: {{ . }}
      {{- end }}
      - name: AWS_PROFILE
        value: default
      - name: AWS_DEFAULT_PROFILE
        value: default
      {{- end }}
      {{- if $flags }}
      # Appended to `vllm serve /mnt/models` by the template's command (through eval, so
      # the JSON is single-quoted).
      - name: VLLM_ADDITIONAL_ARGS
        value: {{ include "weightstream.shellWords" $flags | quote }}
      {{- end }}
      {{- range $name, $value := $env }}
      - name: {{ $name }}
        value: {{ include "weightstream.scalar" $value | quote }}
      {{- end }}
    {{- end }}
    {{- /* No key at all when empty: a null list in a strategic merge deletes it. */}}
    {{- if or (not $through) $own }}
    volumeMounts:
      {{- if not $through }}
      # Same path as on the node and in the init container: the links the init
      # container writes into /mnt/models point here.
      {{- include "weightstream.cacheMountReadOnly" $root | nindent 6 }}
      {{- end }}
      {{- if $own }}
      - name: {{ include "weightstream.modelVolumeName" $root }}
        mountPath: /mnt/models
        readOnly: true
      {{- end }}
    {{- end }}
volumes:
  {{- include "weightstream.cacheVolume" $root | nindent 2 }}
  {{- if $own }}
  - name: {{ include "weightstream.modelVolumeName" $root }}
    emptyDir: {}
  {{- end }}
{{- end }}

{{/*
Words joined for a shell that evaluates them: a word with JSON in it is single-quoted.
*/}}
{{- define "weightstream.shellWords" -}}
{{- $out := list }}
{{- range . }}
{{- if hasPrefix "{" . }}
{{- $out = append $out (printf "'%s'" .) }}
{{- else }}
{{- $out = append $out . }}
{{- end }}
{{- end }}
{{- join " " $out }}
{{- end }}

{{/*
supportedUriFormats of the ClusterStorageContainers: the configured list plus one anchored
regex per host in httpHosts (KServe matches with Go's regexp.MatchString, a search).
*/}}
{{- define "weightstream.supportedUriFormats" -}}
{{- $csc := .Values.kserve.clusterStorageContainer }}
{{- $formats := $csc.supportedUriFormats }}
{{- range $csc.httpHosts }}
{{- $formats = append $formats (dict "regex" (printf "^https?://%s/.+" (regexQuoteMeta .))) }}
{{- end }}
{{- toYaml $formats }}
{{- end }}
