{{/*
The public API over HTTP/JSON and gRPC-Web (docs/http-api.md): an Envoy container in the pod of a service
whose chart sets httpApi.enabled (the gateway's). It listens on httpApi.port, transcodes with the API's
descriptor set and calls the service on loopback. Its configuration, the descriptor set, the OpenAPI
document it serves at /openapi.json and the storefront it serves at / are the service chart's files/
(written by k8s/http_api.py from the code `make run` uses), shipped in a ConfigMap.
*/}}

{{/*
The storefront's assets, which its page loads from /assets/<name>: each its file's name (files/<name>) and
what its Content-Type starts with. The ConfigMap ships them, and `helm test` fetches each and checks its type
(_tests.tpl): an asset added here is both shipped and checked.
*/}}
{{- define "shopmesh-lib.httpApi-storefrontAssets" -}}
- [app.js, text/javascript]
- [countries.js, text/javascript]
- [app.css, text/css]
{{- end -}}

{{- define "shopmesh-lib.httpApi-configmap" -}}
{{- $c := .c -}}
{{- $files := .root.Files -}}
{{- /* Text files go in data (as the edge reads them), the descriptor set in binaryData. */ -}}
{{- $text := list "http-api.json" "http-api-traced.json" "shop.openapi.json" "index.html" -}}
{{- range include "shopmesh-lib.httpApi-storefrontAssets" . | fromYamlArray -}}
{{- $text = append $text (first .) -}}
{{- end -}}
{{- $contents := dict -}}
{{- $missing := list -}}
{{- range $name := append $text "shop.binpb" -}}
{{- $content := $files.Get (printf "files/%s" $name) -}}
{{- if $content -}}
{{- $_ := set $contents $name $content -}}
{{- else -}}
{{- $missing = append $missing (printf "files/%s" $name) -}}
{{- end -}}
{{- end -}}
{{- if $missing -}}
{{- fail (printf "httpApi for %s: the chart needs %s (make http-api writes them)" $c.name (join ", " $missing)) -}}
{{- end -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $c.name }}-http-api
  namespace: {{ $c.namespace }}
  labels:
    {{- include "shopmesh-lib.labels" . | nindent 4 }}
data:
  {{- range $name := $text }}
  {{ $name }}: |
    {{- get $contents $name | nindent 4 }}
  {{- end }}
binaryData:
  shop.binpb: {{ get $contents "shop.binpb" | b64enc }}
{{- end -}}

{{- define "shopmesh-lib.httpApi-container" -}}
{{- $c := .c -}}
- name: http-api
  image: {{ $c.httpApi.image | quote }}
  imagePullPolicy: {{ $c.imagePullPolicy }}
  {{- /* What the file cannot know, which Envoy merges into it: the bound on its heap, under this container's
       memory limit, and where its spans go and how many requests start a trace. */}}
  {{- $overlay := include "shopmesh-lib.httpApi-heap" $c.httpApi.resources | fromJson }}
  {{- if $c.otel.endpoint }}
  {{- $overlay = mergeOverwrite $overlay (include "shopmesh-lib.httpApi-traces" $c.otel | fromJson) }}
  {{- end }}
  args:
    - --config-path
    - /etc/shopmesh/http-api/{{ ternary "http-api-traced.json" "http-api.json" (not (empty $c.otel.endpoint)) }}
    # The bound on Envoy's heap (under the memory limit below){{ if $c.otel.endpoint }}, where its spans go and how many requests start a trace{{ end }}: Envoy merges this into the file.
    - --config-yaml
    - {{ toJson $overlay | quote }}
    - --log-level
    - warn
    # No shared memory for hot restarts: a pod restarts the container instead.
    - --disable-hot-restart
    # Worker threads: Envoy's default is one per core of the node, not of the container's CPU limit.
    - --concurrency
    - "2"
  ports:
    - name: http
      containerPort: {{ $c.httpApi.port }}
      protocol: TCP
    # Envoy's Prometheus metrics, and only those of its admin interface (which stays on the pod's loopback, its
    # containers' alone: no Unix socket as `make run`'s, which would need a writable volume; k8s/http_api.py),
    # and the probes' /healthz: a listener outside the cap on the public port's connections.
    - name: http-metrics
      containerPort: {{ $c.httpApi.metricsPort }}
      protocol: TCP
  {{- /* Both probes on http-metrics, which Envoy answers itself (its health_check filter) whatever holds the
       public port: a client reopening its connections as fast as Envoy sheds them there takes the freed ones,
       and a liveness probe of the public port then restarted a healthy edge under the flood, every client
       dropped. Readiness too: the flood is at the pod's address, not through it, and taking the pod out of
       the Service (on a probe that wins or loses a race for a connection) would only send the Service's
       share of the flood to the others, one after another, until none were ready. */}}
  readinessProbe:
    httpGet:
      path: /healthz
      port: http-metrics
    periodSeconds: {{ $c.probes.readinessPeriodSeconds }}
    timeoutSeconds: 2
    failureThreshold: {{ $c.probes.readinessFailureThreshold }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: http-metrics
    periodSeconds: {{ $c.probes.livenessPeriodSeconds }}
    timeoutSeconds: 2
    failureThreshold: 3
  {{- /* Whole seconds (the API's type), rounded up: the drain settings may be fractional. Never 0 s (a sleep
       that needs a feature gate some clusters lack): the drain delay is at least a readiness period, 1 s
       or more (shopmesh-lib.config). */}}
  lifecycle:
    # Envoy exits at once on SIGTERM. It keeps relaying while the service drains (NOT_SERVING for
    # drainDelaySeconds, in-flight calls for shutdownGraceSeconds), and stops after it.
    preStop:
      sleep:
        seconds: {{ addf $c.drain.drainDelaySeconds $c.drain.shutdownGraceSeconds | ceil | int }}
  resources:
    {{- toYaml $c.httpApi.resources | nindent 4 }}
  securityContext:
    allowPrivilegeEscalation: false
    privileged: false
    readOnlyRootFilesystem: true
    runAsNonRoot: true
    runAsUser: 10001
    runAsGroup: 10001
    capabilities:
      drop: ["ALL"]
    seccompProfile:
      type: RuntimeDefault
  volumeMounts:
    - name: http-api
      mountPath: /etc/shopmesh/http-api
      readOnly: true
{{- end -}}

{{- define "shopmesh-lib.httpApi-volume" -}}
{{- $c := .c -}}
- name: http-api
  configMap:
    name: {{ $c.name }}-http-api
{{- end -}}


{{/* What the edge's traced configuration (files/http-api-traced.json) leaves to its start, from global.otel (the
dict the services' settings come from): the `traces` cluster its spans go to (the collector's name resolved by
DNS, over HTTP/2), and the share of requests that start a trace, as the services' OTEL_TRACES_SAMPLER_RATIO
(which then follow the edge's decision). As JSON, for --config-yaml. */}}
{{- define "shopmesh-lib.httpApi-traces" -}}
{{- if hasPrefix "https://" (lower .endpoint) -}}
{{- fail (printf "global.otel.endpoint (%s): the edge's Envoy (httpApi) sends its spans without TLS; give it a plaintext OTLP/gRPC endpoint (a collector in the cluster, which the mesh encrypts)" .endpoint) -}}
{{- end -}}
{{- /* Envoy draws a request's number out of 10,000 (whatever the denominator): 0.01 % steps. */ -}}
{{- $perTenThousand := round (mulf .samplerRatio 10000) 0 | int -}}
{{- if and (gt (float64 .samplerRatio) 0.0) (eq $perTenThousand 0) -}}
{{- fail (printf "global.otel.samplerRatio (%v): the edge's Envoy (httpApi) samples in steps of 0.0001, so it would trace nothing; give 0 or at least 0.0001" .samplerRatio) -}}
{{- end -}}
{{- /* Behind Istio's sidecar, which has decided (_mesh.tpl): all, which records what the sidecar did. */ -}}
{{- if .sidecarSpans -}}
{{- $perTenThousand = 10000 -}}
{{- end -}}
{{- $hostPort := ternary (urlParse .endpoint).host .endpoint (contains "://" .endpoint) -}}
{{- /* The host without its port, an IPv6 address without its brackets. */ -}}
{{- $host := regexReplaceAll ":[0-9]+$" $hostPort "" | trimPrefix "[" | trimSuffix "]" -}}
{{- $address := dict "socket_address" (dict "address" $host "port_value" (int .port)) -}}
{{- /* As every cluster of shopmesh_platform.mesh.envoy.cluster: MAX_HEADERS_COUNT, and its circuit breakers. */ -}}
{{- $http2 := dict "@type" "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions" "common_http_protocol_options" (dict "max_headers_count" 8192) "explicit_http_config" (dict "http2_protocol_options" dict) -}}
{{- $breakers := dict "thresholds" (list (dict "priority" "DEFAULT" "max_pending_requests" 1024 "max_requests" 1024 "max_retries" 1024)) -}}
{{- $cluster := dict
    "name" "traces"
    "type" "STRICT_DNS"
    "dns_lookup_family" "V4_PREFERRED"
    "connect_timeout" "1s"
    "typed_extension_protocol_options" (dict "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" $http2)
    "circuit_breakers" $breakers
    "load_assignment" (dict "cluster_name" "traces" "endpoints" (list (dict "lb_endpoints" (list (dict "endpoint" (dict "address" $address)))))) -}}
{{- $sampling := dict "numerator" $perTenThousand "denominator" "TEN_THOUSAND" -}}
{{- $runtime := dict "layers" (list (dict "name" "sampling" "static_layer" (dict "tracing.random_sampling" $sampling))) -}}
{{- toJson (dict "static_resources" (dict "clusters" (list $cluster)) "layered_runtime" $runtime) -}}
{{- end -}}


{{/* The monitor of Envoy's heap that the edge's configuration (files/http-api.json) leaves to its start, bounded
under the container's memory limit (the `resources` given): half of it, as
shopmesh_platform.http_api.max_heap_bytes computes it; the rest is for the binary's own pages, which the
container's memory counts too. Its overload actions (resetting the largest streams, refusing requests, closing
connections that send more) keep unfinished requests from taking Envoy past the limit, into an OOM kill of every
client's connection. As JSON, for --config-yaml. */}}
{{- define "shopmesh-lib.httpApi-heap" -}}
{{- /* A number of bytes (`--set ...memory=134217728`) reaches the template as a float: written out whole. */ -}}
{{- $limit := include "shopmesh-lib.string" (dict "setting" "httpApi.resources.limits.memory" "value" (dig "limits" "memory" "" .)) -}}
{{- if not $limit -}}
{{- fail "httpApi.resources.limits.memory: the edge's Envoy bounds its heap under its container's memory limit; give one (128Mi by default)" -}}
{{- end -}}
{{- if not (regexMatch "^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$" $limit) -}}
{{- fail (printf "httpApi.resources.limits.memory (%s): the edge's Envoy bounds its heap under it, and reads a whole number with a unit of Ki, Mi, Gi, Ti, k, M, G or T (or none: bytes), such as 128Mi" $limit) -}}
{{- end -}}
{{- $units := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- $bytes := mul (regexFind "^[0-9]+" $limit | int64) (get $units (regexReplaceAll "^[0-9]+" $limit "")) -}}
{{- $monitor := dict
    "name" "envoy.resource_monitors.fixed_heap"
    "typed_config" (dict "@type" "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig" "max_heap_size_bytes" (div $bytes 2)) -}}
{{- toJson (dict "overload_manager" (dict "resource_monitors" (list $monitor))) -}}
{{- end -}}
