{{/*
The public API over HTTP/JSON and gRPC-Web (docs/http-api.md): an Envoy container in the pod of a service
whose chart sets httpApi.enabled (the gateway's). It listens on httpApi.port, transcodes with the API's
descriptor set and calls the service on loopback. Its configuration, the descriptor set, the OpenAPI
document it serves at /openapi.json and the storefront it serves at / are the service chart's files/
(written by k8s/http_api.py from the code `make run` uses), shipped in a ConfigMap.
*/}}

{{- define "shopmesh-lib.httpApi-configmap" -}}
{{- $c := .c -}}
{{- $files := .root.Files -}}
{{- /* Text files go in data (as the edge reads them), the descriptor set in binaryData. */ -}}
{{- $text := list "http-api.json" "shop.openapi.json" "index.html" "app.js" "app.css" -}}
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
  args:
    - --config-path
    - /etc/shopmesh/http-api/http-api.json
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
    # Envoy's Prometheus metrics, and only those of its admin interface (which stays on loopback).
    - name: http-metrics
      containerPort: {{ $c.httpApi.metricsPort }}
      protocol: TCP
  # Envoy answers /healthz itself (its health_check filter), before transcoding.
  readinessProbe:
    httpGet:
      path: /healthz
      port: http
    periodSeconds: {{ $c.probes.readinessPeriodSeconds }}
    timeoutSeconds: 2
    failureThreshold: 1
  livenessProbe:
    httpGet:
      path: /healthz
      port: http
    periodSeconds: {{ $c.probes.livenessPeriodSeconds }}
    timeoutSeconds: 2
    failureThreshold: 3
  {{- /* Whole seconds (the API's type), rounded up: the drain settings may be fractional. */}}
  {{- $sleep := addf $c.drain.drainDelaySeconds $c.drain.shutdownGraceSeconds | ceil | int }}
  {{- if gt $sleep 0 }}
  lifecycle:
    # Envoy exits at once on SIGTERM. It keeps relaying while the service drains (NOT_SERVING for
    # drainDelaySeconds, in-flight calls for shutdownGraceSeconds), and stops after it. (No drain at
    # all: no hook, since a sleep of 0 s needs a feature gate some clusters lack.)
    preStop:
      sleep:
        seconds: {{ $sleep }}
  {{- end }}
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
