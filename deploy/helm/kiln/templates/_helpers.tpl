{{/* Names, labels and the environment every Kiln service shares. */}}

{{- define "kiln.fullname" -}}
{{- if contains "kiln" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-kiln" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kiln.labels" -}}
app.kubernetes.io/part-of: kiln
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "kiln.selector" -}}
app.kubernetes.io/part-of: kiln
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{- define "kiln.image" -}}
{{- $img := .root.Values.image -}}
{{- $registry := ternary "" (printf "%s/" (trimSuffix "/" $img.registry)) (eq $img.registry "") -}}
{{- printf "%s%s%s:%s" $registry $img.prefix .service (default .root.Chart.AppVersion $img.tag) -}}
{{- end -}}

{{- define "kiln.secretName" -}}
{{- default (printf "%s-secrets" (include "kiln.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "kiln.strimziCluster" -}}
{{- default (printf "%s-kafka" .Release.Name) .Values.kafka.strimzi.clusterName -}}
{{- end -}}

{{- define "kiln.bootstrap" -}}
{{- if .Values.kafka.bootstrap -}}
{{- .Values.kafka.bootstrap -}}
{{- else if .Values.kafka.strimzi.enabled -}}
{{- printf "%s-kafka-bootstrap:9092" (include "kiln.strimziCluster" .) -}}
{{- else -}}
{{- fail "kafka.bootstrap is required (or set kafka.strimzi.enabled=true to have Strimzi make a cluster)" -}}
{{- end -}}
{{- end -}}

{{/* The bus settings (lib/kilnbus BusSettings) as environment variables. */}}
{{- define "kiln.busEnv" -}}
- name: KILN_KAFKA_BOOTSTRAP
  value: {{ include "kiln.bootstrap" . | quote }}
- name: KILN_TOPIC_PREFIX
  value: {{ .Values.kafka.topicPrefix | quote }}
- name: KILN_TOPIC_PARTITIONS
  value: {{ .Values.kafka.partitions | quote }}
- name: KILN_TOPIC_REPLICATION
  value: {{ .Values.kafka.replication | quote }}
- name: KILN_KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- with .Values.kafka.sasl }}
{{- if .mechanism }}
- name: KILN_KAFKA_SASL_MECHANISM
  value: {{ .mechanism | quote }}
{{- if .existingSecret }}
- name: KILN_KAFKA_SASL_USERNAME
  valueFrom: {secretKeyRef: {name: {{ .existingSecret }}, key: username}}
- name: KILN_KAFKA_SASL_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ .existingSecret }}, key: password}}
{{- else }}
- name: KILN_KAFKA_SASL_USERNAME
  value: {{ .username | quote }}
- name: KILN_KAFKA_SASL_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ include "kiln.fullname" $ }}-kafka, key: password}}
{{- end }}
{{- end }}
{{- end }}
{{- if .Values.kafka.tls.caSecret }}
- name: KILN_KAFKA_SSL_CAFILE
  value: /etc/kiln/kafka-ca/{{ .Values.kafka.tls.caKey }}
{{- end }}
- name: KILN_METRICS_HOST
  value: "0.0.0.0"
{{- end -}}

{{/* A service's own `settings` map as KILN_<NAME> variables (lists and maps as JSON). */}}
{{- define "kiln.settingsEnv" -}}
{{- range $name, $value := . }}
- name: KILN_{{ upper $name }}
  value: {{ if or (kindIs "slice" $value) (kindIs "map" $value) }}{{ toJson $value | quote }}{{ else }}{{ $value | toString | quote }}{{ end }}
{{- end }}
{{- end -}}
