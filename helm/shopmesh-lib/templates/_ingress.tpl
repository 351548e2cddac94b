{{/*
Ingress (docs/kubernetes.md, "Ingress"): Gateway API routes from a Gateway the cluster runs (Istio's, Envoy
Gateway, ...) to the edge's Service. The Gateway is the platform's; a route attaches to the listener(s) its
parentRefs name. On one listener, an HTTPRoute and a GRPCRoute whose host names overlap (a route without
any overlaps every other) are not both accepted: give them different listeners, or host names to both.
Native gRPC goes through the GRPCRoute only: the HTTPRoute's backend speaks HTTP/1.1 (JSON, gRPC-Web).
*/}}

{{/* HTTPRoute <service>-http: everything on its host names to the HTTP/JSON port (HTTP/JSON, gRPC-Web,
/openapi.json): the edge's Envoy itself refuses what the API does not have. */}}
{{- define "shopmesh-lib.ingress-http" -}}
{{- $c := .c -}}
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
{{ include "shopmesh-lib.metadata" (dict "ctx" . "name" (printf "%s-http" $c.name)) }}
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
      # Checkout runs the whole saga before it answers. Above the edge's own bound (30 s, http_api.ROUTE_TIMEOUT), so that its answer
      # (a Status in JSON) is the one a client gets; and instead of the implementation's default (Envoy
      # Gateway: 15 s). Every method is unary: no stream is cut. (Gateway API v1.2+.)
      timeouts:
        request: {{ $c.ingress.requestTimeout }}
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
{{ include "shopmesh-lib.metadata" (dict "ctx" . "name" (printf "%s-grpc" $c.name)) }}
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
