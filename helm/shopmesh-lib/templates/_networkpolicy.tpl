{{/*
The service's NetworkPolicy: it selects the service's pods, so everything not listed is denied.
Ingress: its callers (from `callers`, the topology's callers_of), the helm test pods, Prometheus.
Egress: DNS, the services it calls (`calls`), NATS if it publishes or consumes, PostgreSQL if it owns a
database there, the SMTP relay if it sends e-mail, the OTLP collector if configured, the mesh's control plane if meshed.
tests/k8s checks the rendered rules against shopmesh_platform.topology.
*/}}
{{- define "shopmesh-lib.networkpolicy" -}}
{{- $c := .c -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ $c.name }}
  namespace: {{ $c.namespace }}
  labels:
    {{- include "shopmesh-lib.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "shopmesh-lib.selectorLabels" $c | nindent 6 }}
  policyTypes: [Ingress, Egress]
  ingress:
    {{- if $c.serviceCallers }}
    # The services that call this one.
    - from:
        {{- range $c.serviceCallers }}
        - podSelector:
            matchLabels:
              app.kubernetes.io/name: {{ . }}
              app.kubernetes.io/part-of: shopmesh
        {{- end }}
      ports:
        {{- include "shopmesh-lib.grpcPorts" $c | nindent 8 }}
    {{- end }}
    {{- if $c.edge }}
    # Clients from outside the service graph (the edge), over gRPC and, with the http-api container, HTTP.
    - ports:
        {{- include "shopmesh-lib.grpcPorts" $c | nindent 8 }}
        {{- if $c.httpApi.enabled }}
        - protocol: TCP
          port: {{ $c.httpApi.port }}
        {{- end }}
      {{- with $c.networkPolicy.clients }}
      from:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    {{- end }}
    # `helm test` pods check health over gRPC (and the edge's HTTP/JSON API).
    - from:
        - podSelector:
            matchLabels:
              app.kubernetes.io/component: helm-test
              app.kubernetes.io/part-of: shopmesh
      ports:
        {{- include "shopmesh-lib.grpcPorts" $c | nindent 8 }}
        {{- if $c.httpApi.enabled }}
        - protocol: TCP
          port: {{ $c.httpApi.port }}
        {{- end }}
    # Prometheus scrapes the metrics port (and the http-api container's).
    - from:
        {{- toYaml $c.networkPolicy.scrapers | nindent 8 }}
      ports:
        - protocol: TCP
          port: {{ $c.metricsPort }}
        {{- if $c.httpApi.enabled }}
        - protocol: TCP
          port: {{ $c.httpApi.metricsPort }}
        {{- end }}
        {{- if and $c.monitoring.enabled $c.mesh }}
        # The mesh proxy's own metrics (the PodMonitor <name>-proxy).
        - protocol: TCP
          port: {{ include "shopmesh-lib.proxyMetricsPort" $c }}
        {{- end }}
    {{- with $c.networkPolicy.extraIngress }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  egress:
    # DNS.
    - to:
        {{- toYaml $c.networkPolicy.dns | nindent 8 }}
      ports:
        - protocol: UDP
          port: 53
        - protocol: TCP
          port: 53
    {{- if $c.calls }}
    # The services this one calls.
    - to:
        {{- range $c.calls }}
        - podSelector:
            matchLabels:
              app.kubernetes.io/name: {{ . }}
              app.kubernetes.io/part-of: shopmesh
        {{- end }}
      ports:
        {{- include "shopmesh-lib.grpcPorts" $c | nindent 8 }}
    {{- end }}
    {{- if $c.nats.enabled }}
    # NATS JetStream: it publishes or consumes events.
    - to:
        {{- toYaml $c.nats.peers | nindent 8 }}
      ports:
        - protocol: TCP
          port: {{ $c.nats.port }}
    {{- end }}
    {{- if and $c.database.enabled (eq $c.database.mode "postgres") }}
    # Its own PostgreSQL database.
    - to:
        {{- toYaml $c.database.peers | nindent 8 }}
      ports:
        - protocol: TCP
          port: {{ $c.database.port }}
    {{- end }}
    {{- if $c.email.enabled }}
    # The SMTP relay: it sends e-mail.
    - to:
        {{- toYaml $c.email.peers | nindent 8 }}
      ports:
        - protocol: TCP
          port: {{ $c.email.port }}
    {{- end }}
    {{- if and $c.otel.endpoint $c.otel.peers }}
    # The OpenTelemetry collector (OTLP/gRPC).
    - to:
        {{- toYaml $c.otel.peers | nindent 8 }}
      ports:
        - protocol: TCP
          port: {{ $c.otel.port }}
    {{- end }}
    {{- include "shopmesh-lib.meshEgress" $c }}
    {{- with $c.networkPolicy.extraEgress }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* Egress from a meshed pod's proxy to the mesh's control plane (nothing without a mesh). */}}
{{- define "shopmesh-lib.meshEgress" -}}
{{- $c := . -}}
    {{- $plane := $c.networkPolicy.meshControlPlane }}
    {{- if eq $c.mesh "istio" }}
    # Istio: the sidecar fetches config and certificates from istiod (global.networkPolicy.meshControlPlane).
    - to:
        {{- include "shopmesh-lib.meshControlPlanePeer" $plane | nindent 8 }}
      ports:
        - protocol: TCP
          port: 15012
    {{- end }}
    {{- if eq $c.mesh "linkerd" }}
    # Linkerd: the proxy talks to the destination, identity and policy controllers.
    - to:
        {{- include "shopmesh-lib.meshControlPlanePeer" $plane | nindent 8 }}
      ports:
        - protocol: TCP
          port: 8080
        - protocol: TCP
          port: 8086
        - protocol: TCP
          port: 8090
    {{- end }}
{{- end -}}

{{/* The peer of the mesh's control plane: its namespace, and its pods' labels when given. */}}
{{- define "shopmesh-lib.meshControlPlanePeer" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .namespace | quote }}
  {{- with .podLabels }}
  podSelector:
    matchLabels:
      {{- toYaml . | nindent 6 }}
  {{- end }}
{{- end -}}

{{/*
The ports a gRPC call to a service arrives on: its gRPC port, and under Linkerd also the proxy's inbound
port, to which a meshed client's proxy connects instead (Linkerd's docs: a NetworkPolicy that blocks it
blocks all meshed traffic).
*/}}
{{- define "shopmesh-lib.grpcPorts" -}}
- protocol: TCP
  port: {{ .grpcPort }}
{{- if eq .mesh "linkerd" }}
- protocol: TCP
  port: {{ .meshPolicy.linkerdInboundPort }}
{{- end }}
{{- end -}}


{{/* The port of the mesh proxy's Prometheus metrics: Istio's 15090, Linkerd's 4191. */}}
{{- define "shopmesh-lib.proxyMetricsPort" -}}
{{- if eq .mesh "istio" }}15090{{ else }}4191{{ end -}}
{{- end -}}
