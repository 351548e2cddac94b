{{/*
Names and labels. Every object of a service is named after the service itself (catalog, orders, ...),
not after the release, so that a caller finds `<service>.<namespace>.svc.<cluster domain>:50051` whether
the service came with the umbrella release or with its own. One copy of a service per namespace.
*/}}

{{- define "shopmesh-lib.selectorLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/part-of: shopmesh
{{- end -}}

{{- define "shopmesh-lib.labels" -}}
{{ include "shopmesh-lib.selectorLabels" .c }}
app.kubernetes.io/component: {{ .component | default "grpc-service" }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | default .root.Chart.Version | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{/* A service's host name in the cluster: <service>.<namespace>.svc.<domain> (global.clusterDomain: not every
cluster's is Kubernetes' default, cluster.local, and a name in another resolves nowhere). */}}
{{- define "shopmesh-lib.host" -}}
{{ .service }}.{{ .namespace }}.svc.{{ .domain }}
{{- end -}}

{{/* The address callers use: <service>.<namespace>.svc.<domain>:50051. */}}
{{- define "shopmesh-lib.address" -}}
{{ include "shopmesh-lib.host" . }}:50051
{{- end -}}

{{/* <NAME>_ADDRESS, as shopmesh_platform.topology.Service.address_variable. */}}
{{- define "shopmesh-lib.addressVariable" -}}
{{ . | upper | replace "-" "_" }}_ADDRESS
{{- end -}}

{{/*
checkov skips, each with its one-line reason. checkov reads any annotation whose key contains
`checkov.io/skip` as `CHECK_ID=reason` (the reason must not contain "="). Only what cannot hold in that
rendering is skipped; tests/k8s fails on any skip without a reason.
*/}}
{{- define "shopmesh-lib.checkovSkips" -}}
{{- if not .imageDigest }}
checkov.io/skip-image-digest: CKV_K8S_43=Image referenced by tag in this rendering; skaffold and CI set image.digest to pin it
{{- else if and .edgeImage (not (contains "@" .edgeImage)) }}
checkov.io/skip-image-digest: CKV_K8S_43=The http-api container's Envoy image is referenced by tag; httpApi.image (or global.httpApi.image) with @sha256:... pins it
{{- end }}
{{- if .servesNothing }}
checkov.io/skip-liveness: CKV_K8S_8=The load generator serves no port to probe; Locust exits on a fault and the kubelet restarts it
checkov.io/skip-readiness: CKV_K8S_9=The load generator is no Service's endpoint; nothing routes to it to need readiness
{{- end }}
{{- if .testPod }}
checkov.io/skip-liveness: CKV_K8S_8=A helm test pod runs one health check and exits; a liveness probe does not apply
checkov.io/skip-readiness: CKV_K8S_9=A helm test pod runs one health check and exits; it serves nothing to be ready for
{{- end }}
{{- end -}}

{{/* Non-empty when the container reads Secrets (DATABASE_URL and the fingerprint key, NATS_URL, SMTP credentials) as files. */}}
{{- define "shopmesh-lib.secretFiles" -}}
{{- if include "shopmesh-lib.secretSources" . | fromYamlArray -}}
true
{{- end -}}
{{- end -}}

{{/* The projected volume's sources: each Secret the container reads and the variable (file, `path`) each key
becomes. Also the variables an env: entry may not replace (shopmesh-lib.configmap): the environment would win
over the file. */}}
{{- define "shopmesh-lib.secretSources" -}}
{{- $sources := list -}}
{{- if and .database.enabled (eq .database.mode "postgres") -}}
{{- $sources = append $sources (dict "secret" (dict "name" .database.existingSecret "items" (list (dict "key" .database.secretKey "path" "DATABASE_URL")))) -}}
{{- if .idempotency.enabled -}}
{{- $sources = append $sources (dict "secret" (dict "name" .idempotency.existingSecret "items" (list (dict "key" .idempotency.secretKey "path" "IDEMPOTENCY_FINGERPRINT_KEY")))) -}}
{{- end -}}
{{- end -}}
{{- if and .nats.enabled .nats.existingSecret -}}
{{- $sources = append $sources (dict "secret" (dict "name" .nats.existingSecret "items" (list (dict "key" .nats.secretKey "path" "NATS_URL")))) -}}
{{- end -}}
{{- if and .email.enabled .email.existingSecret -}}
{{- $sources = append $sources (dict "secret" (dict "name" .email.existingSecret "items" (list (dict "key" "SMTP_USERNAME" "path" "SMTP_USERNAME") (dict "key" "SMTP_PASSWORD" "path" "SMTP_PASSWORD")))) -}}
{{- end -}}
{{- toYaml $sources -}}
{{- end -}}

{{/* metadata: of one more object of the service (mesh policy, ingress routes); .name is the object's name,
.namespace (if given) where it goes when that is not the release's (beside the platform's Gateway). */}}
{{- define "shopmesh-lib.metadata" -}}
metadata:
  name: {{ .name }}
  namespace: {{ dig "namespace" .ctx.c.namespace . }}
  labels:
    {{- include "shopmesh-lib.labels" .ctx | nindent 4 }}
{{- end -}}


{{/* The peers a pod's NetworkPolicy lets it ask DNS when global.networkPolicy.dns does not name them (NodeLocal
     DNSCache's address, say), as YAML: kube-dns in kube-system. Every pod's egress, a service's and the load
     generator's alike. */}}
{{- define "shopmesh-lib.defaultDnsPeers" -}}
{{- list (dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" "kube-system")) "podSelector" (dict "matchLabels" (dict "k8s-app" "kube-dns"))) | toYaml -}}
{{- end -}}
