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

{{- /* Builds run in a namespace of their own by default, <release namespace>-builds: the builder's
Role then covers only build pods, and only that namespace needs Pod Security "privileged". */ -}}
{{- define "kiln.buildNamespace" -}}
{{- default (printf "%s-builds" .Release.Namespace) .Values.builder.kubernetes.namespace -}}
{{- end -}}

{{- define "kiln.strimziCluster" -}}
{{- default (printf "%s-kafka" .Release.Name) .Values.kafka.strimzi.clusterName -}}
{{- end -}}

{{- define "kiln.strimziAuth" -}}
{{- if and .Values.kafka.strimzi.enabled .Values.kafka.strimzi.authentication }}true{{ end -}}
{{- end -}}

{{- define "kiln.bootstrap" -}}
{{- if .Values.kafka.bootstrap -}}
{{- .Values.kafka.bootstrap -}}
{{- else if .Values.kafka.strimzi.enabled -}}
{{- printf "%s-kafka-bootstrap:%s" (include "kiln.strimziCluster" .) (ternary "9093" "9092" (eq (include "kiln.strimziAuth" .) "true")) -}}
{{- else -}}
{{- fail "kafka.bootstrap is required (or set kafka.strimzi.enabled=true to have Strimzi make a cluster)" -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the CA that signed the brokers' certificates, if there is one. */}}
{{- define "kiln.kafkaCaSecret" -}}
{{- if .Values.kafka.tls.caSecret -}}
{{- .Values.kafka.tls.caSecret -}}
{{- else if include "kiln.strimziAuth" . -}}
{{- printf "%s-cluster-ca-cert" (include "kiln.strimziCluster" .) -}}
{{- end -}}
{{- end -}}

{{/* A service's Kafka user: its own SCRAM account, so ACLs can tell the services apart. */}}
{{- define "kiln.kafkaUser" -}}
{{- index .root.Values.kafka.sasl.usernames .service | default (printf "kiln-%s" .service) -}}
{{- end -}}

{{/*
The bus settings (lib/kilnbus BusSettings) of one service as environment variables:
dict "root" $ "service" <name>.
*/}}
{{- define "kiln.busEnv" -}}
{{- $root := .root -}}
{{- $k := $root.Values.kafka -}}
- name: KILN_KAFKA_BOOTSTRAP
  value: {{ include "kiln.bootstrap" $root | quote }}
- name: KILN_TOPIC_PREFIX
  value: {{ $k.topicPrefix | quote }}
- name: KILN_TOPIC_PARTITIONS
  value: {{ $k.partitions | quote }}
- name: KILN_TOPIC_REPLICATION
  value: {{ $k.replication | quote }}
{{- if include "kiln.strimziAuth" $root }}
{{- /* Strimzi's User Operator writes each KafkaUser's password into a Secret of the user's name. */}}
- name: KILN_KAFKA_SECURITY_PROTOCOL
  value: SASL_SSL
- name: KILN_KAFKA_SASL_MECHANISM
  value: SCRAM-SHA-512
- name: KILN_KAFKA_SASL_USERNAME
  value: {{ include "kiln.kafkaUser" . | quote }}
- name: KILN_KAFKA_SASL_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ include "kiln.kafkaUser" . }}, key: password}}
{{- else }}
- name: KILN_KAFKA_SECURITY_PROTOCOL
  value: {{ $k.securityProtocol | quote }}
{{- if $k.sasl.mechanism }}
- name: KILN_KAFKA_SASL_MECHANISM
  value: {{ $k.sasl.mechanism | quote }}
- name: KILN_KAFKA_SASL_USERNAME
  value: {{ include "kiln.kafkaUser" . | quote }}
{{- if $k.sasl.existingSecret }}
- name: KILN_KAFKA_SASL_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ $k.sasl.existingSecret }}, key: {{ .service }}}}
{{- else }}
{{- $_ := required (printf "kafka.sasl.passwords.%s is required with kafka.sasl.mechanism (or kafka.sasl.existingSecret)" .service) (get $k.sasl.passwords .service) }}
- name: KILN_KAFKA_SASL_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ include "kiln.fullname" $root }}-kafka, key: {{ .service }}}}
{{- end }}
{{- end }}
{{- end }}
{{- if include "kiln.kafkaCaSecret" $root }}
- name: KILN_KAFKA_SSL_CAFILE
  value: /etc/kiln/kafka-ca/{{ ternary "ca.crt" $k.tls.caKey (not $k.tls.caSecret) }}
{{- end }}
- name: KILN_METRICS_HOST
  value: "0.0.0.0"
{{- end -}}

{{/*
What each service may do on the bus: user, operations, resource type, pattern type, name (@P@ is
the topic prefix). The same table as deploy/local/kafka-acls.txt, which the local stack applies and
tests/stack/test_helm.py compares with this one; docs/operators.md repeats it for clusters Kiln
does not make. Anything not listed is denied.
*/}}
{{- define "kiln.kafkaAclTable" -}}
*          Describe,DescribeConfigs,Create   topic  prefixed  @P@
*          Read                              topic  literal   @P@phase-events
*          Write                             topic  literal   @P@dead-letter
gateway    Write                             topic  literal   @P@launch-requested
gateway    Write                             topic  literal   @P@phase-events
gateway    Describe                          group  prefixed  kiln-
resolver   Read                              topic  literal   @P@launch-requested
resolver   Write                             topic  literal   @P@build-requested
resolver   Write                             topic  literal   @P@hub-launch-requested
resolver   Write                             topic  literal   @P@phase-events
resolver   Read                              group  literal   kiln-resolver
builder    Read                              topic  literal   @P@build-requested
builder    Write                             topic  literal   @P@hub-launch-requested
builder    Write                             topic  literal   @P@phase-events
builder    Read                              group  literal   kiln-builder
launcher   Read                              topic  literal   @P@hub-launch-requested
launcher   Write                             topic  literal   @P@phase-events
launcher   Read                              group  literal   kiln-launcher
analytics  All                               topic  prefixed  kiln-analytics
analytics  All                               group  prefixed  kiln-analytics
{{- end -}}

{{/* One service's rows of that table as Strimzi simple-authorization ACLs: dict "root" $ "service" <name>. */}}
{{- define "kiln.kafkaAcls" -}}
{{- $service := .service -}}
{{- $prefix := .root.Values.kafka.topicPrefix -}}
{{- range $row := splitList "\n" (include "kiln.kafkaAclTable" .root) }}
{{- $f := regexSplit "\\s+" (trim $row) -1 }}
{{- if and (eq (len $f) 5) (or (eq (index $f 0) "*") (eq (index $f 0) $service)) }}
- resource:
    type: {{ index $f 2 }}
    name: {{ index $f 4 | replace "@P@" $prefix | quote }}
    patternType: {{ ternary "prefix" "literal" (eq (index $f 3) "prefixed") }}
  operations: {{ splitList "," (index $f 1) | toJson }}
  host: "*"
{{- end }}
{{- end }}
{{- end -}}

{{/* A service's own `settings` map as KILN_<NAME> variables (lists and maps as JSON). */}}
{{- define "kiln.settingsEnv" -}}
{{- range $name, $value := . }}
- name: KILN_{{ upper $name }}
  value: {{ if or (kindIs "slice" $value) (kindIs "map" $value) }}{{ toJson $value | quote }}{{ else }}{{ $value | toString | quote }}{{ end }}
{{- end }}
{{- end -}}
