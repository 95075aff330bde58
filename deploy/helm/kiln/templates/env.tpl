{{/* Each service's own environment: what it needs from the chart's shared sections. */}}

{{- define "kiln.secretEnv" -}}
- name: {{ .name }}
  valueFrom: {secretKeyRef: {name: {{ include "kiln.secretName" .root }}, key: {{ .key }}}}
{{- end -}}

{{- define "kiln.sealKeys" -}}
{{- /* The gateway and launcher read a JSON list; the key is wrapped where it is used. */ -}}
- name: KILN_TOKEN_SEAL_KEY
  valueFrom: {secretKeyRef: {name: {{ include "kiln.secretName" . }}, key: token-seal-key}}
- name: KILN_TOKEN_SEAL_KEYS
  value: '["$(KILN_TOKEN_SEAL_KEY)"]'
{{- end -}}

{{- define "kiln.env.gateway" -}}
{{ include "kiln.sealKeys" . }}
{{ include "kiln.secretEnv" (dict "root" . "name" "KILN_BUILD_TOKEN_SECRET" "key" "build-token") }}
{{ include "kiln.secretEnv" (dict "root" . "name" "KILN_RESUME_SECRET" "key" "resume") }}
{{ include "kiln.secretEnv" (dict "root" . "name" "KILN_SESSION_SECRET" "key" "session") }}
- name: KILN_HUB_API_URL
  value: {{ .Values.hub.apiUrl | quote }}
- name: KILN_HUB_PUBLIC_URL
  value: {{ required "hub.publicUrl is required: where users reach JupyterHub" .Values.hub.publicUrl | quote }}
{{- end -}}

{{- define "kiln.env.resolver" -}}
- name: KILN_IMAGE_PREFIX
  value: {{ required "registry.image_prefix is required (as BinderHub's image_prefix)" .Values.registry.image_prefix | quote }}
- name: KILN_REGISTRY_URL
  value: {{ required "registry.url is required" .Values.registry.url | quote }}
- name: KILN_REGISTRY_TOKEN_URL
  value: {{ .Values.registry.token_url | quote }}
{{ include "kiln.registryPullEnv" . }}
{{ include "kiln.privateRepoEnv" . }}
{{- end -}}

{{- define "kiln.privateRepoEnv" -}}
{{- /* Both keys optional: a Secret may hold either kind of credential. */ -}}
{{- with .Values.privateRepos.existingSecret }}
- name: KILN_GIT_CREDENTIALS
  valueFrom: {secretKeyRef: {name: {{ . | quote }}, key: git-credentials, optional: true}}
- name: KILN_GITHUB_APP
  valueFrom: {secretKeyRef: {name: {{ . | quote }}, key: github-app, optional: true}}
{{- end }}
{{- end -}}

{{- define "kiln.registryPullEnv" -}}
{{- /* The read-only account: looking images up needs no more. The push account never reaches a Kiln pod. */ -}}
- name: KILN_REGISTRY_USERNAME
  value: {{ .Values.registry.pull.username | quote }}
{{- if .Values.registry.pull.password }}
- name: KILN_REGISTRY_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ include "kiln.fullname" . }}-registry, key: pull-password}}
{{- end }}
{{- end -}}

{{- define "kiln.env.builder" -}}
{{- $k := .Values.builder.kubernetes -}}
- name: KILN_BUILD_EXECUTOR
  value: kubernetes
- name: KILN_BUILD_NAMESPACE
  value: {{ include "kiln.buildNamespace" . | quote }}
- name: KILN_BUILD_IMAGE
  value: {{ $k.image | quote }}
- name: KILN_BUILD_PUSH_IMAGE
  value: {{ $k.pushImage | quote }}
- name: KILN_BUILD_PUSH_REGISTRY
  value: {{ regexReplaceAll "^https?://" .Values.registry.pushUrl "" | trimSuffix "/" | quote }}
- name: KILN_BUILD_CPU_REQUEST
  value: {{ $k.resources.requests.cpu | default "" | quote }}
- name: KILN_BUILD_MEMORY_REQUEST
  value: {{ $k.resources.requests.memory | default "" | quote }}
- name: KILN_BUILD_CPU_LIMIT
  value: {{ (($k.resources.limits | default dict).cpu) | default "" | quote }}
- name: KILN_BUILD_POD_MEMORY_LIMIT
  value: {{ (($k.resources.limits | default dict).memory) | default "" | quote }}
- name: KILN_BUILD_DISK_LIMIT
  value: {{ index ($k.resources.limits | default dict) "ephemeral-storage" | default "" | quote }}
- name: KILN_BUILD_TIMEOUT_S
  value: {{ $k.timeoutSeconds | quote }}
- name: KILN_BUILD_NODE_SELECTOR
  value: {{ toJson $k.nodeSelector | quote }}
- name: KILN_BUILD_TOLERATIONS
  value: {{ toJson $k.tolerations | quote }}
- name: KILN_BUILD_SERVICE_ACCOUNT
  value: {{ include "kiln.fullname" . }}-build
- name: KILN_BUILD_DOCKER_CONFIG_SECRET
  value: {{ include "kiln.fullname" . }}-push
- name: KILN_BASE_IMAGE
  value: {{ .Values.builder.baseImage | default (printf "%sbase:latest" .Values.registry.image_prefix) | quote }}
- name: KILN_ENV_IMAGE_PREFIX
  value: {{ printf "%senv" .Values.registry.image_prefix | quote }}
- name: KILN_REGISTRY_URL
  value: {{ .Values.registry.url | quote }}
{{ include "kiln.registryPullEnv" . }}
{{- if .Values.registry.insecure }}
- name: KILN_INSECURE_REGISTRIES
  value: {{ without (list (regexReplaceAll "^https?://" .Values.registry.url "" | trimSuffix "/") (regexReplaceAll "^https?://" .Values.registry.pushUrl "" | trimSuffix "/")) "" | toJson | quote }}
{{- end }}
- name: KILN_WORK_DIR
  value: /tmp/kiln-builds
{{ include "kiln.privateRepoEnv" . }}
{{- end -}}

{{- define "kiln.env.launcher" -}}
{{ include "kiln.sealKeys" . }}
- name: KILN_HUB_API_URL
  value: {{ .Values.hub.apiUrl | quote }}
- name: KILN_HUB_PUBLIC_URL
  value: {{ required "hub.publicUrl is required: where users reach JupyterHub" .Values.hub.publicUrl | quote }}
- name: KILN_HUB_PROXY_URL
  value: {{ .Values.hub.proxyUrl | quote }}
- name: KILN_HUB_API_TOKEN
  valueFrom: {secretKeyRef: {name: {{ .Values.hub.tokenSecret.name }}, key: {{ .Values.hub.tokenSecret.key }}}}
{{- end -}}

{{- define "kiln.env.analytics" -}}
- name: KILN_ANALYTICS_GROUP
  value: kiln-analytics
{{- end -}}
