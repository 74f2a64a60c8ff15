{{- define "operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "operator.fullname" -}}
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

{{- define "operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: whatsapp-coder
{{- end -}}

{{- define "operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/*
What the operator calls, and nothing else (tests/operator/test_crd_and_chart.py holds the same
list and checks the rendered RBAC against it).

Cluster-wide, for kopf itself and only when it serves every namespace: it lists and watches
CustomResourceDefinitions to find its resource. Serving the listed watchNamespaces, the operator
turns kopf's cluster scanning off (wacoder_operator.handlers.configure: it then lists no
Namespaces and watches no CRDs), so a Role in each namespace is all it gets. kopf runs standalone
(one pod, no peering objects).
*/}}
{{- define "operator.clusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end -}}

{{/*
In the bots' namespaces:
- the WhatsAppBots: kopf lists and watches them and patches them (its finalizer and annotations),
  the operator reads one (get), patches its status and clears its promote/abort annotations;
  `update` of whatsappbots/finalizers is what the OwnerReferencesPermissionEnforcement admission
  plugin asks of whoever sets an ownerReference with blockOwnerDeletion to a bot (the operator
  does, on the bot's ConfigMap and routing Services);
- Events: kopf and the operator post them (create; never patched);
- what the operator owns (the bot's ConfigMap, the routing Services: get, create, merge patch),
  reads (the Deployments of a colour, listed by label, and scales to zero with a patch) and the
  Secret it signs the synthetic message with (get); nothing is watched but the WhatsAppBots
  (the operator polls on a kopf timer);
- what `helm upgrade --install` / `helm uninstall` (no --wait, --skip-crds) of the
  whatsapp-coder chart creates, changes and deletes: exactly the kinds that chart renders, and
  helm's release records (Secrets; helm never patches or watches them).
*/}}
{{- define "operator.helmVerbs" -}}
[get, list, create, update, patch, delete]
{{- end -}}

{{- define "operator.namespacedRules" -}}
- apiGroups: [whatsappcoder.dev]
  resources: [whatsappbots]
  verbs: [get, list, watch, patch]
- apiGroups: [whatsappcoder.dev]
  resources: [whatsappbots/status]
  verbs: [patch]
- apiGroups: [whatsappcoder.dev]
  resources: [whatsappbots/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: {{ include "operator.helmVerbs" . }}
- apiGroups: [apps]
  resources: [deployments]
  verbs: {{ include "operator.helmVerbs" . }}
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, create, update, delete]
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: {{ include "operator.helmVerbs" . }}
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: {{ include "operator.helmVerbs" . }}
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: {{ include "operator.helmVerbs" . }}
- apiGroups: [networking.k8s.io]
  resources: [ingresses, networkpolicies]
  verbs: {{ include "operator.helmVerbs" . }}
{{- if .Values.rbac.serviceMonitors }}
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors, prometheusrules]
  verbs: {{ include "operator.helmVerbs" . }}
{{- end }}
{{- end -}}
