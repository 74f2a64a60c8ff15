{{/*
Names. Every object of a release is named `<prefix>-…`, prefix = `<fullname>-<colour>`, so two
releases of one bot (one per colour) never share a name, even with the same fullname. The
routing Services are the exception by design: `<botName>-active` / `<botName>-preview`.
Lengths: prefix <= 42, longest suffix "-mcp-bridge-headless" (20): within 63.
*/}}
{{- define "wacoder.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wacoder.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "wacoder.prefix" -}}
{{- printf "%s-%s" (include "wacoder.fullname" . | trunc 36 | trimSuffix "-") .Values.colour -}}
{{- end -}}

{{- define "wacoder.botName" -}}
{{- default (include "wacoder.fullname" .) .Values.botName | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "wacoder.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wacoder.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "wacoder.prefix" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object of the release. */}}
{{- define "wacoder.labels" -}}
helm.sh/chart: {{ include "wacoder.chart" . }}
app.kubernetes.io/name: {{ include "wacoder.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: whatsapp-coder
whatsappcoder.dev/bot: {{ include "wacoder.botName" . }}
colour: {{ .Values.colour }}
{{- end -}}

{{/* What selects the release's pods (name, instance, colour): immutable selectors. */}}
{{- define "wacoder.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wacoder.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
colour: {{ .Values.colour }}
{{- end -}}

{{/* One component's selector: include with (dict "root" $ "component" "agent"). */}}
{{- define "wacoder.componentSelector" -}}
{{ include "wacoder.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* A component of the bot in any colour (the routing Services, the shared AutoCoder hop). */}}
{{- define "wacoder.botComponentSelector" -}}
app.kubernetes.io/name: {{ include "wacoder.name" .root }}
whatsappcoder.dev/bot: {{ include "wacoder.botName" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
The services: module, ports and the secrets each one needs (wacoder.settings.SERVICE_SECRETS,
plus REDIS_URL, the Twilio SID for the notifier and the optional OpenAI key). The ports are the
contract of docs/architecture.md, not values.
*/}}
{{- define "wacoder.services" -}}
webhook:
  values: webhook
  module: webhook.main
  httpPort: 8000
  healthPort: http
  botConfig: true
  secrets: [redisUrl, twilioAuthToken, phoneHashSalt, stateEncryptionKey, serviceToken]
agent:
  values: agent
  module: agent.main
  grpcPort: 50051
  metricsPort: 9101
  healthPort: metrics
  botConfig: true
  # Twilio's credentials: the media users send are fetched from Twilio's API with them.
  secrets: [redisUrl, twilioAccountSid, twilioAuthToken, phoneHashSalt, stateEncryptionKey, serviceToken, openaiApiKey]
mcp-bridge:
  values: mcpBridge
  module: mcp_bridge.main
  grpcPort: 50052
  metricsPort: 9102
  healthPort: metrics
  botConfig: false
  secrets: [redisUrl, phoneHashSalt, stateEncryptionKey, serviceToken, autocoderApiKey]
notifier:
  values: notifier
  module: notifier.main
  grpcPort: 50053
  metricsPort: 9103
  healthPort: metrics
  botConfig: true
  secrets: [redisUrl, twilioAccountSid, twilioAuthToken, phoneHashSalt, stateEncryptionKey, serviceToken]
{{- if .Values.autocoder.enabled }}
autocoder:
  values: autocoder
  module: autocoder.main
  mcpPort: 8765
  metricsPort: 9104
  healthPort: metrics
  botConfig: false
  # The LLM key only where AutoCoder may use it (`autocoder.llm: builtin` never does).
  secrets: [phoneHashSalt, autocoderApiKey, {{ if ne .Values.autocoder.llm "builtin" }}openaiApiKey, {{ end }}autocoderSigningKey]
{{- end }}
{{- end -}}

{{/* The environment variable of each secret entry. */}}
{{- define "wacoder.secretEnvNames" -}}
redisUrl: REDIS_URL
twilioAccountSid: TWILIO_ACCOUNT_SID
twilioAuthToken: TWILIO_AUTH_TOKEN
openaiApiKey: OPENAI_API_KEY
stateEncryptionKey: STATE_ENCRYPTION_KEY
phoneHashSalt: PHONE_HASH_SALT
serviceToken: SERVICE_TOKEN
autocoderApiKey: AUTOCODER_API_KEY
autocoderSigningKey: AUTOCODER_SIGNING_KEY
{{- end -}}

{{/* The secret entries that may be missing: their references are optional (comma-separated). */}}
{{- define "wacoder.optionalSecrets" -}}
openaiApiKey,autocoderSigningKey
{{- end -}}

{{- define "wacoder.defaultSecretName" -}}
{{- default (printf "%s-secrets" (include "wacoder.botName" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* env entries of a list of secret entries: (dict "root" $ "secrets" (list ...)). */}}
{{- define "wacoder.secretEnv" -}}
{{- $root := .root -}}
{{- $names := include "wacoder.secretEnvNames" $root | fromYaml -}}
{{- $optional := include "wacoder.optionalSecrets" $root | splitList "," -}}
{{- range .secrets }}
{{- $entry := get $root.Values.secrets . }}
- name: {{ get $names . }}
  valueFrom:
    secretKeyRef:
      name: {{ default (include "wacoder.defaultSecretName" $root) $entry.name }}
      key: {{ $entry.key }}
      {{- if has . $optional }}
      optional: true
      {{- end }}
{{- end }}
{{- end -}}

{{/* `dns:///<headless>.<ns>.svc.<domain>:<port>`: gRPC's client-side round robin over the pods. */}}
{{- define "wacoder.grpcTarget" -}}
{{- printf "dns:///%s-%s-headless.%s.svc.%s:%v" (include "wacoder.prefix" .root) .component .root.Release.Namespace .root.Values.clusterDomain .port -}}
{{- end -}}

{{- define "wacoder.autocoderMcpUrl" -}}
{{- if .Values.autocoder.enabled -}}
{{- printf "http://%s-autocoder.%s.svc.%s:8765/mcp" (include "wacoder.prefix" .) .Release.Namespace .Values.clusterDomain -}}
{{- else -}}
{{- required "autocoder.mcpUrl is required when autocoder.enabled is false" .Values.autocoder.mcpUrl -}}
{{- end -}}
{{- end -}}

{{- define "wacoder.image" -}}
{{- printf "%s/%s:%s" .root.Values.image.repository .service (default .root.Chart.AppVersion .root.Values.image.tag) -}}
{{- end -}}

{{- define "wacoder.botConfigMapName" -}}
{{- default (printf "%s-bot" (include "wacoder.prefix" .)) .Values.botConfig.existingConfigMap -}}
{{- end -}}

{{/* The security context of every container (AutoCoder's seccomp/procMount from its sandbox values). */}}
{{- define "wacoder.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
{{- if eq .component "autocoder" }}
{{- with .root.Values.autocoder.sandbox }}
seccompProfile:
  type: {{ .seccompProfile }}
  {{- if eq .seccompProfile "Localhost" }}
  localhostProfile: {{ required "autocoder.sandbox.seccompLocalhostProfile is required with seccompProfile Localhost" .seccompLocalhostProfile }}
  {{- end }}
{{- if ne .procMount "Default" }}
procMount: {{ .procMount }}
{{- end }}
{{- end }}
{{- else }}
seccompProfile:
  type: RuntimeDefault
{{- end }}
{{- end -}}
