{{- define "shopmesh-lib.serviceaccount" -}}
{{- $c := .c -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $c.name }}
  namespace: {{ $c.namespace }}
  labels:
    {{- include "shopmesh-lib.labels" . | nindent 4 }}
  {{- with $c.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
# No token unless a pod asks for one: the services never call the Kubernetes API.
automountServiceAccountToken: false
{{- end -}}

{{- define "shopmesh-lib.service-object" -}}
{{- $c := .c -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ $c.name }}
  namespace: {{ $c.namespace }}
  labels:
    {{- include "shopmesh-lib.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "shopmesh-lib.selectorLabels" $c | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $c.grpcPort }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    - name: metrics
      port: {{ $c.metricsPort }}
      targetPort: metrics
      protocol: TCP
      appProtocol: http
    {{- if $c.httpApi.enabled }}
    # The same API over HTTP/JSON and gRPC-Web (the http-api container).
    - name: http
      port: {{ $c.httpApi.port }}
      targetPort: http
      protocol: TCP
      appProtocol: http
    - name: http-metrics
      port: {{ $c.httpApi.metricsPort }}
      targetPort: http-metrics
      protocol: TCP
      appProtocol: http
    {{- end }}
{{- end -}}

{{/* Non-secret settings, as the chassis reads them (docs/chassis.md). Secrets come as files from SECRETS_DIR.
     The chart's settings, then the service chart's env: for the service's own settings. An env: entry may not
     name a variable the chart sets (here, or as a Secret's file): the rest of the pod is built on the chart's
     value (the probes, Service and policies on GRPC_PORT, the drain's sums within terminationGracePeriodSeconds
     on DRAIN_DELAY_SECONDS...), which the entry would replace unchecked; the render fails naming the value to
     set instead. The variables refused are those the chart renders, so a new one is refused with no list to
     keep; and MIGRATE_ONLY, which the chart renders in the `migrate` init container alone. By set, not mergeOverwrite, which would skip an empty env: value. Keys in sorted order. */}}
{{- define "shopmesh-lib.configmap" -}}
{{- $c := .c -}}
{{- $data := dict
    "SERVICE_NAME" $c.name
    "GRPC_HOST" "0.0.0.0"
    "GRPC_PORT" $c.grpcPort
    "METRICS_HOST" "0.0.0.0"
    "METRICS_PORT" $c.metricsPort
    "DRAIN_DELAY_SECONDS" $c.drain.drainDelaySeconds
    "SHUTDOWN_GRACE_SECONDS" $c.drain.shutdownGraceSeconds
    "SHUTDOWN_HOOKS_BUDGET_SECONDS" $c.drain.shutdownHooksBudgetSeconds
    "LOG_LEVEL" $c.logLevel
    "LOG_FORMAT" $c.logFormat -}}
{{- if $c.database.enabled -}}
{{- $_ := set $data "DATA_DIR" "/data" -}}
{{- if eq $c.database.mode "postgres" -}}
{{- $_ := set $data "DATABASE_POOL_SIZE" $c.database.pool.size -}}
{{- $_ := set $data "DATABASE_MAX_OVERFLOW" $c.database.pool.maxOverflow -}}
{{- end -}}
{{- end -}}
{{- if include "shopmesh-lib.secretFiles" $c -}}
{{- $_ := set $data "SECRETS_DIR" $c.secretsDir -}}
{{- end -}}
{{- /* With global.nats.existingSecret, NATS_URL (credentials and all) is a file of SECRETS_DIR instead. */ -}}
{{- if and $c.nats.enabled (not $c.nats.existingSecret) -}}
{{- $_ := set $data "NATS_URL" $c.nats.url -}}
{{- end -}}
{{- range $callee := $c.calls -}}
{{- $_ := set $data (include "shopmesh-lib.addressVariable" $callee) (include "shopmesh-lib.address" (dict "service" $callee "namespace" $c.namespace "domain" $c.clusterDomain)) -}}
{{- end -}}
{{- if $c.email.enabled -}}
{{- $_ := set $data "SMTP_HOST" $c.email.host -}}
{{- $_ := set $data "SMTP_PORT" $c.email.port -}}
{{- $_ := set $data "SMTP_USE_TLS" $c.email.useTLS -}}
{{- end -}}
{{- /* The public API's service (the gateway, whose SLOs these are) refuses a client's deadline below its
     floor, the latency threshold plus the chassis' skew tolerance (added by the gateway: guard.deadline_floor):
     a DEADLINE_EXCEEDED the availability SLO counts is a latency miss too, and no client burns the
     availability budget with deadlines no answer could meet (docs/operations.md). */ -}}
{{- if $c.monitoring.slo.enabled -}}
{{- $_ := set $data "MIN_CLIENT_DEADLINE_SECONDS" $c.monitoring.slo.thresholdSeconds -}}
{{- end -}}
{{- with $c.otel.endpoint -}}
{{- $_ := set $data "OTEL_EXPORTER_OTLP_ENDPOINT" . -}}
{{- $_ := set $data "OTEL_TRACES_SAMPLER_RATIO" $c.otel.samplerRatio -}}
{{- end -}}
{{- /* What each variable comes from, for the refusal's message; one not here gets a general one. */ -}}
{{- $from := dict
    "DRAIN_DELAY_SECONDS" "drain.drainDelaySeconds"
    "SHUTDOWN_GRACE_SECONDS" "drain.shutdownGraceSeconds"
    "SHUTDOWN_HOOKS_BUDGET_SECONDS" "drain.shutdownHooksBudgetSeconds"
    "LOG_LEVEL" "logLevel (or global.logLevel)"
    "LOG_FORMAT" "logFormat (or global.logFormat)"
    "DATABASE_POOL_SIZE" "database.pool.size (or global.database.pool.size)"
    "DATABASE_MAX_OVERFLOW" "database.pool.maxOverflow (or global.database.pool.maxOverflow)"
    "SMTP_HOST" "global.smtp.host"
    "SMTP_PORT" "global.smtp.port"
    "SMTP_USE_TLS" "global.smtp.useTLS"
    "OTEL_EXPORTER_OTLP_ENDPOINT" "global.otel.endpoint"
    "OTEL_TRACES_SAMPLER_RATIO" "global.otel.samplerRatio"
    "MIN_CLIENT_DEADLINE_SECONDS" "slo.latency.thresholdSeconds" -}}
{{- $fixed := dict
    "SERVICE_NAME" "the service's name, which its metrics, spans and errors carry"
    "GRPC_HOST" "the pod's addresses, where the kubelet's probes and the Service reach it"
    "METRICS_HOST" "the pod's addresses, where Prometheus scrapes it"
    "GRPC_PORT" "the port of the probes, the Service, the NetworkPolicy and the mesh policy"
    "METRICS_PORT" "the port of the Service, the NetworkPolicy and Prometheus' scrape"
    "DATA_DIR" "where the pod's data volume is mounted"
    "SECRETS_DIR" "where the pod's Secrets are mounted" -}}
{{- range $callee := $c.calls -}}
{{- $_ := set $fixed (include "shopmesh-lib.addressVariable" $callee) (printf "the address of the %s Service, from calls:" $callee) -}}
{{- end -}}
{{- $files := dict -}}
{{- range $source := include "shopmesh-lib.secretSources" $c | fromYamlArray -}}
{{- range $source.secret.items -}}
{{- $_ := set $files .path (printf "the Secret %s, key %s" $source.secret.name .key) -}}
{{- end -}}
{{- end -}}
{{- /* The secret settings, whether or not this pod mounts their Secret: an env: entry would put the value in
     the ConfigMap (and the values file). Each → where it comes from instead. */ -}}
{{- $secrets := dict
    "DATABASE_URL" (printf "the Secret database.existingSecret (%s, key database.secretKey) with database.mode postgres (or global.database.mode)" $c.database.existingSecret)
    "IDEMPOTENCY_FINGERPRINT_KEY" (printf "the Secret idempotency.existingSecret (%s, key idempotency.secretKey) with idempotency.enabled and database.mode postgres; with SQLite the service keeps a key of its own in /data" $c.idempotency.existingSecret)
    "NATS_URL" "a Secret named by global.nats.existingSecret (key global.nats.secretKey), global.nats.url naming the servers"
    "SMTP_USERNAME" "the Secret global.smtp.existingSecret (keys SMTP_USERNAME and SMTP_PASSWORD)"
    "SMTP_PASSWORD" "the Secret global.smtp.existingSecret (keys SMTP_USERNAME and SMTP_PASSWORD)" -}}
{{- range $key, $value := $c.env -}}
{{- $setting := printf "env.%s for %s" $key $c.name -}}
{{- if hasKey $files $key -}}
{{- fail (printf "%s: the pod reads %s from %s, mounted as a file, and an environment variable would win over it; put the value in that Secret, not in values" $setting $key (get $files $key)) -}}
{{- else if hasKey $secrets $key -}}
{{- fail (printf "%s: %s is a secret, and an env: entry would put it in the service's ConfigMap; give it in %s, not in values" $setting $key (get $secrets $key)) -}}
{{- else if eq $key "MIGRATE_ONLY" -}}
{{- fail (printf "%s: the chart sets %s=true in the `migrate` init container alone; in the ConfigMap the app container would read it too, and migrate (or, owning no database, refuse it) and exit at every start, a crash loop; remove the entry" $setting $key) -}}
{{- else if not (hasKey $data $key) -}}
{{- else if hasKey $from $key -}}
{{- fail (printf "%s: the chart sets %s itself, from %s, and checks it against the rest of the pod; an env: entry would replace it unchecked. Set %s instead" $setting $key (get $from $key) (get $from $key)) -}}
{{- else if hasKey $fixed $key -}}
{{- fail (printf "%s: the chart sets %s itself, to %q (%s), and the rest of the pod is built on that value; remove the entry" $setting $key (toString (get $data $key)) (get $fixed $key)) -}}
{{- else -}}
{{- fail (printf "%s: the chart sets %s itself (to %q) from its own values; set that value instead of the env: entry" $setting $key (toString (get $data $key))) -}}
{{- end -}}
{{- $_ := set $data $key $value -}}
{{- end -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $c.name }}
  namespace: {{ $c.namespace }}
  labels:
    {{- include "shopmesh-lib.labels" . | nindent 4 }}
data:
  {{- range $key, $value := $data }}
  {{ $key }}: {{ $value | quote }}
  {{- end }}
{{- end -}}

{{- define "shopmesh-lib.hpa" -}}
{{- $c := .c -}}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $c.name }}
  namespace: {{ $c.namespace }}
  labels:
    {{- include "shopmesh-lib.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ $c.name }}
  minReplicas: {{ $c.autoscaling.minReplicas }}
  maxReplicas: {{ $c.autoscaling.maxReplicas }}
  # The service's container alone: a pod's Resource metric divides the CPU of every container (a mesh's
  # proxy, the gateway's edge) by the sum of their requests, which skews the target and stops on a sidecar
  # without a request (Linkerd's default proxy). Its canary's container has the same name.
  metrics:
    - type: ContainerResource
      containerResource:
        name: cpu
        container: {{ $c.name }}
        target:
          type: Utilization
          averageUtilization: {{ $c.autoscaling.targetCPUUtilizationPercentage }}
  behavior:
    scaleDown:
      # Scale in slowly: every removed pod drains (DRAIN_DELAY_SECONDS + in-flight calls).
      stabilizationWindowSeconds: 300
      policies:
        - type: Pods
          value: 1
          periodSeconds: 60
{{- end -}}

{{- define "shopmesh-lib.pdb" -}}
{{- $c := .c -}}
{{- /* track: "stable" (the budget <name>, bound by the values) or "canary" (<name>-canary, maxUnavailable 1, only
     from 2 replicas: _service.tpl): a drain then evicts the canary's pods one at a time, each once its
     replacement is ready, so its share of the calls always has a pod to go to (neither mesh falls back to the
     stable subset). One pod cannot be kept without blocking every drain. */ -}}
{{- $track := .track | default "stable" -}}
{{- $canary := eq $track "canary" -}}
{{- $pdb := ternary (dict "bound" "maxUnavailable" "value" 1) $c.pdb $canary -}}
{{- $replicas := int (ternary $c.canary.replicas (ternary $c.autoscaling.minReplicas $c.replicas $c.autoscaling.enabled) $canary) -}}
{{- /* The pods the bound counts (kept for minAvailable, let go for maxUnavailable), as the disruption controller
     counts them: a percentage of the replicas rounded up (minAvailable 50% of one pod is that pod,
     maxUnavailable 25% of 2 pods is 1). */ -}}
{{- $bound := toString $pdb.value -}}
{{- $count := 0 -}}
{{- if regexMatch "^[0-9]+%$" $bound -}}
{{- $count = div (add (mul (trimSuffix "%" $bound | int) $replicas) 99) 100 -}}
{{- else if regexMatch "^[0-9]+$" $bound -}}
{{- $count = int $bound -}}
{{- else -}}
{{- fail (printf "podDisruptionBudget: %s %q is neither a number of pods nor a percentage (50%%)" $pdb.bound $bound) -}}
{{- end -}}
{{- if eq $pdb.bound "minAvailable" -}}
{{- if le $replicas (int $count) -}}
{{- fail (printf "podDisruptionBudget: minAvailable %v with %v replica(s) keeps %v pod(s) and would block every node drain; raise replicaCount / autoscaling.minReplicas, or lower minAvailable" $bound $replicas $count) -}}
{{- end -}}
{{- else if lt (int $count) 1 -}}
{{- fail (printf "podDisruptionBudget: maxUnavailable %v lets no pod go and would block every node drain; give 1 or more (or a percentage of at least one pod)" $bound) -}}
{{- end -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $c.name }}{{ if $canary }}-canary{{ end }}
  namespace: {{ $c.namespace }}
  labels:
    {{- include "shopmesh-lib.labels" . | nindent 4 }}
spec:
  {{ $pdb.bound }}: {{ $pdb.value }}
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "shopmesh-lib.selectorLabels" $c | nindent 6 }}
      # One track's pods only: a canary's pod must not stand in for the stable ones while a drain evicts them
      # all, nor they for it.
      shopmesh.io/track: {{ $track }}
{{- end -}}


{{/*
With a canary: a Service per track (<name>-stable, <name>-canary), the backends among which Linkerd's
GRPCRoute splits the calls to <name> (_mesh.tpl); also a way to reach one track directly
(`kubectl port-forward svc/<name>-canary 50051`).
*/}}
{{- define "shopmesh-lib.track-services" -}}
{{- $ctx := . -}}
{{- $c := .c -}}
{{- range $i, $track := list "stable" "canary" }}
{{- if $i }}
---
{{- end }}
apiVersion: v1
kind: Service
metadata:
  name: {{ $c.name }}-{{ $track }}
  namespace: {{ $c.namespace }}
  labels:
    {{- include "shopmesh-lib.labels" $ctx | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "shopmesh-lib.selectorLabels" $c | nindent 4 }}
    shopmesh.io/track: {{ $track }}
  ports:
    - name: grpc
      port: {{ $c.grpcPort }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
{{- end }}
{{- end -}}
