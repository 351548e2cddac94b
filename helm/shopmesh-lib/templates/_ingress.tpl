{{/*
Ingress (docs/kubernetes.md, "Ingress"): Gateway API routes from a Gateway the cluster runs (Istio's, Envoy
Gateway, ...) to the edge's Service. The Gateway is the platform's; a route attaches to the listener(s) its
parentRefs name. Gateway API does not let an HTTPRoute and a GRPCRoute share a host name on one listener,
so the two take different listeners or host names.
*/}}

{{/* HTTPRoute <service>-http: everything on its host names to the HTTP/JSON port (HTTP/JSON, gRPC-Web,
/openapi.json): the edge's Envoy itself refuses what the API does not have. */}}
{{- define "shopmesh-lib.ingress-http" -}}
{{- $c := .c -}}
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {{ $c.name }}-http
  namespace: {{ $c.namespace }}
  labels:
    {{- include "shopmesh-lib.labels" . | nindent 4 }}
spec:
  parentRefs:
    {{- toYaml $c.ingress.http.parentRefs | nindent 4 }}
  {{- with $c.ingress.http.hostnames }}
  hostnames:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  rules:
    - backendRefs:
        - name: {{ $c.name }}
          port: {{ $c.httpApi.port }}
      # Checkout runs the whole saga before it answers: the edge's own bound (20 s) is the one that counts.
      timeouts:
        request: 30s
{{- end -}}

{{/* GRPCRoute <service>-grpc: the services it serves to clients (service.grpcServices) to the gRPC port, and
nothing else: health and reflection stay inside the cluster, as on the HTTP/JSON port. */}}
{{- define "shopmesh-lib.ingress-grpc" -}}
{{- $c := .c -}}
{{- if not $c.grpcServices -}}
{{- fail (printf "ingress.grpc for %s: service.grpcServices names no service to route" $c.name) -}}
{{- end -}}
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: {{ $c.name }}-grpc
  namespace: {{ $c.namespace }}
  labels:
    {{- include "shopmesh-lib.labels" . | nindent 4 }}
spec:
  parentRefs:
    {{- toYaml $c.ingress.grpc.parentRefs | nindent 4 }}
  {{- with $c.ingress.grpc.hostnames }}
  hostnames:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  rules:
    - matches:
        {{- range $c.grpcServices }}
        - method:
            type: Exact
            service: {{ . }}
        {{- end }}
      backendRefs:
        - name: {{ $c.name }}
          port: {{ $c.grpcPort }}
{{- end -}}
