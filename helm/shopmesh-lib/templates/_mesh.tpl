{{/*
The service mesh's policy for one service, from the call graph (`callers` in the service chart, kept equal
to shopmesh_platform.topology by tests/k8s), for global.mesh=istio or linkerd (docs/mesh.md "On Kubernetes").
The same rules as the local mesh (`make run MESH=envoy`, shopmesh_platform.mesh.envoy):

  - mutual TLS on every service port but the metrics port (Prometheus is not in the mesh) and the
    gateway's gRPC port (the edge: clients come from outside the mesh);
  - grpc.health.v1.Health open to anyone who reaches the port (`helm test`, and under Linkerd the
    kubelet's probes; Istio's agent sends the probes to the app past the proxy);
  - every other method only to the services that call this one in the graph (by their mTLS identity:
    their ServiceAccount, which is named after the service), each to the methods it calls (callerMethods)
    and no other: the gateway reads stock, it does not reserve it. Reflection is for no caller: grpcurl
    reaches a service past its proxy (kubectl port-forward), or the edge, open to anyone. Deny by default:
    a service with no callers listed admits nobody but health and metrics (an empty list never means all);
  - the mesh retries only what never reached the callee (Istio's default also retries UNAVAILABLE,
    which would repeat a Charge or a PlaceOrder the callee may have acted on);
  - an endpoint whose own connections fail in a row (refused, reset, timed out: Envoy's locally originated
    errors) leaves the load balancer for a while (Istio); the statuses it answers never count
    (consecutive5xxErrors: 0): a healthy pod answers UNAVAILABLE, a 503 to Envoy, while a dependency or its
    database is away, and ejecting it for that took half the service out of rotation (tests/mesh/
    test_outlier_detection.py).
*/}}
{{- define "shopmesh-lib.mesh" -}}
{{- $c := .c -}}
{{- if eq $c.mesh "istio" }}
{{ include "shopmesh-lib.mesh.istio" . }}
{{- else if eq $c.mesh "linkerd" }}
{{ include "shopmesh-lib.mesh.linkerd" . }}
{{- end }}
{{- end -}}


{{- define "shopmesh-lib.mesh.istio" -}}
{{- $c := .c -}}
{{- $edge := $c.edge -}}
{{- $callers := $c.serviceCallers -}}
{{- $host := include "shopmesh-lib.host" (dict "service" $c.name "namespace" $c.namespace "domain" $c.clusterDomain) -}}
apiVersion: security.istio.io/v1
kind: PeerAuthentication
{{ include "shopmesh-lib.metadata" (dict "ctx" . "name" $c.name) }}
spec:
  selector:
    matchLabels:
      {{- include "shopmesh-lib.selectorLabels" $c | nindent 6 }}
  mtls:
    mode: STRICT
  portLevelMtls:
    # Prometheus scrapes from outside the mesh; the NetworkPolicy admits only the scrapers.
    {{ $c.metricsPort }}:
      mode: PERMISSIVE
    {{- if $edge }}
    # The edge: clients (an ingress, port-forward) are not in the mesh; the gateway authenticates users.
    {{ $c.grpcPort }}:
      mode: PERMISSIVE
    {{- end }}
    {{- if $c.httpApi.enabled }}
    # The HTTP/JSON API: browsers and HTTP clients from outside the mesh; and its Envoy's metrics.
    {{ $c.httpApi.port }}:
      mode: PERMISSIVE
    {{ $c.httpApi.metricsPort }}:
      mode: PERMISSIVE
    {{- end }}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
{{ include "shopmesh-lib.metadata" (dict "ctx" . "name" $c.name) }}
spec:
  selector:
    matchLabels:
      {{- include "shopmesh-lib.selectorLabels" $c | nindent 6 }}
  action: ALLOW
  rules:
    # Health: `helm test` and meshed callers. (The kubelet's probes do not come this way: Istio rewrites
    # them to its agent, which calls the app past the proxy.)
    - to:
        - operation:
            ports: [{{ $c.grpcPort | quote }}]
            paths: ["/grpc.health.v1.Health/*"]
    - to:
        - operation:
            ports: [{{ $c.metricsPort | quote }}]
    {{- if $edge }}
    # The edge: every method, from anyone the NetworkPolicy lets in.
    - to:
        - operation:
            ports: [{{ $c.grpcPort | quote }}]
    {{- end }}
    {{- if $c.httpApi.enabled }}
    # The HTTP/JSON API (the http-api container): anyone the NetworkPolicy lets in; the service behind it
    # authenticates users.
    - to:
        - operation:
            ports: [{{ $c.httpApi.port | quote }}, {{ $c.httpApi.metricsPort | quote }}]
    {{- end }}
    {{- range $caller, $paths := $c.callerPaths }}
    # {{ $caller }}: the methods it calls (callerMethods), nothing else of the service.
    - from:
        - source:
            principals:
              - {{ printf "%s/ns/%s/sa/%s" $c.meshPolicy.trustDomain $c.namespace $caller | quote }}
      to:
        - operation:
            ports: [{{ $c.grpcPort | quote }}]
            paths:
              {{- range $paths }}
              - {{ . | quote }}
              {{- end }}
    {{- end }}
{{- if $callers }}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
{{ include "shopmesh-lib.metadata" (dict "ctx" . "name" $c.name) }}
spec:
  hosts:
    - {{ $host }}
  http:
    # Only the gRPC port: a meshed call to the metrics port keeps its own.
    - match:
        - port: {{ $c.grpcPort }}
      {{- with $c.fault }}
      # A fault for every meshed caller, as a slow or failing pod would be (global.faults.{{ $c.name }};
      # docs/mesh.md, "Injecting faults"): each part hits {{ .percent }} % of the calls, drawn independently; an
      # aborted call never reaches the service. (The kubelet's probes do not pass here.)
      fault:
        {{- if .delay }}
        delay:
          percentage:
            value: {{ .percent }}
          fixedDelay: {{ .delay }}
        {{- end }}
        {{- if .abort }}
        abort:
          percentage:
            value: {{ .percent }}
          grpcStatus: {{ .abort }}
        {{- end }}
      {{- end }}
      {{- if $c.canary.enabled }}
      # Traffic splitting: the canary gets canary.weight percent of the calls (subsets below).
      {{- end }}
      {{- include "shopmesh-lib.mesh.istio-route" . | nindent 6 }}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
{{ include "shopmesh-lib.metadata" (dict "ctx" . "name" $c.name) }}
spec:
  host: {{ $host }}
  trafficPolicy:
    # (mTLS: Istio's automatic mutual TLS, required by the PeerAuthentication above.)
    # The local mesh's connect timeout (shopmesh_platform.mesh.envoy.CONNECT_TIMEOUT, which tests/k8s holds this
    # to). Istio's default is 10 s: a connect to a pod that answers nothing (its node gone, a partition) failed
    # past the callers' deadlines (the gateway's, orders' saga steps'), so the connect-failure retry to another
    # pod never ran, and each failure toward the pod's ejection (outlierDetection) came 10 s late.
    connectionPool:
      tcp:
        connectTimeout: 1s
    outlierDetection:
      # A pod is ejected for its own transport failures only (connect failures, resets, timeouts: Envoy's
      # locally originated errors), never for the statuses it answers. Envoy maps gRPC UNAVAILABLE to 503:
      # counted as 5xx, a healthy orders pod relaying a payments or inventory outage (DEPENDENCY_UNAVAILABLE),
      # or any pod answering DATABASE_UNAVAILABLE, was ejected, half of the service out of rotation for a
      # dependency's outage, and the rest taking everything for baseEjectionTime after it. The chassis'
      # breaker does not count those answers either. A pod whose service is down behind a running sidecar
      # answers the sidecar's 503 and is not ejected here: its readiness probe takes it out of the endpoints.
      splitExternalLocalOriginErrors: true
      consecutiveLocalOriginFailures: {{ $c.meshPolicy.ejectAfterConsecutiveErrors }}
      consecutive5xxErrors: 0
      interval: 10s
      baseEjectionTime: {{ printf "%vs" $c.meshPolicy.ejectionSeconds }}
      maxEjectionPercent: 50
      # Envoy's panic threshold: below half the pods healthy it balances over all of them, ejected ones
      # included; with one replica (dev) ejecting the only pod would turn a few errors into an outage.
      minHealthPercent: 50
  # Always both tracks, canary or not: turning a canary off then changes only the VirtualService, and
  # no route ever names a subset that was just removed.
  subsets:
    {{- range list "stable" "canary" }}
    - name: {{ . }}
      labels:
        shopmesh.io/track: {{ . }}
    {{- end }}
{{- end }}
{{- if $c.otel.sidecarSpans }}
---
{{ include "shopmesh-lib.mesh.istio-tracing" . }}
{{- range $c.ingress.gateways }}
---
{{ include "shopmesh-lib.mesh.istio-ingress-tracing" (dict "ctx" $ "gateway" .) }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
The sidecar's own spans (a server span for each call it lets in, a client span for each it sends out), so
that a trace shows the hop through the mesh between the services' spans. They go where the services'
go: Istio sends them through the OpenTelemetry provider named here (tracingProvider), which
k8s/scripts/mesh-istio.sh adds to the mesh config pointing at the collector of global.otel.endpoint; it
reads the name and the collector from this rendering (k8s/render.py istio-tracing), so this is the one
place either is written. Envoy
speaks W3C trace context with this provider, as the services do, so its spans join theirs. The NetworkPolicy
needs nothing more: the sidecar's connection to the collector leaves the pod to the same peers and port
as the service's.

One decision per trace: an Envoy records a request only when its own draw says so and the traceparent it got
(if any) is sampled, and every Envoy draws afresh (from an x-request-id the services do not forward), so
sidecars each sampling at the ratio would record ratio² of the traces past the second hop, ratio³ past the
third, the services' spans with them (they follow the sidecar's traceparent). So only the first Envoy a
call meets draws at global.otel.samplerRatio: Istio's ingress proxy when the edge's routes attach to a
Gateway (istio-ingress-tracing below), else the edge's sidecar, where every call enters; every other
sidecar, the edge's behind an ingress, and the edge's own HTTP Envoy behind it (_httpapi.tpl), records at
100 %, which records what the trace they are in records (the services' clients, and the ingress proxy,
always send a traceparent). The pod annotations (_deployment.tpl) keep the rest out of the traces: the
services' span exports and Prometheus' scrapes, parentless requests, pass the sidecar by.
*/}}
{{- define "shopmesh-lib.mesh.istio-tracing" -}}
{{- $c := .c -}}
apiVersion: telemetry.istio.io/v1
kind: Telemetry
{{ include "shopmesh-lib.metadata" (dict "ctx" . "name" $c.name) }}
spec:
  selector:
    matchLabels:
      {{- include "shopmesh-lib.selectorLabels" $c | nindent 6 }}
  tracing:
    - providers:
        - name: {{ include "shopmesh-lib.mesh.tracingProvider" . }}
      {{- if and $c.edge (not $c.ingress.traces) }}
      # Where calls enter: the fraction of traces recorded (global.otel.samplerRatio), as the percentage
      # Istio takes (to 0.01), decided here for the whole trace.
      randomSamplingPercentage: {{ include "shopmesh-lib.mesh.samplingPercentage" $c }}
      {{- else }}
      # Whatever the trace this call belongs to was decided where it entered: at the edge, or (the edge
      # behind it) at the ingress proxy. A call that comes to the edge another way (port-forward, a client
      # in the cluster) without a traceparent is recorded every time.
      randomSamplingPercentage: 100
      {{- end }}
{{- end -}}

{{/*
The spans of Istio's ingress proxy for one Gateway (.gateway: name, namespace) the edge's routes attach to,
in the Gateway's namespace, beside it: the ingress is then the first Envoy a call meets, the one that
decides for the trace at global.otel.samplerRatio (see istio-tracing above); the edge's sidecar follows.
Without it the ingress proxy reports nothing and passes the client's traceparent (if any) on untouched.
It attaches by targetRefs, not by a selector of the pods' gateway.networking.k8s.io/gateway-name label:
Istio ignores selectors on a Gateway API gateway's pods once ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY is
off (istioctl analyze warns IST0166), and reads only the targetRefs when a policy has both; the targetRef
finds the same pods, by that label. Named after the Gateway, so that a second release routed through it is
refused by Helm (the object exists) rather than configuring the same proxy twice.
*/}}
{{- define "shopmesh-lib.mesh.istio-ingress-tracing" -}}
{{- $c := .ctx.c -}}
apiVersion: telemetry.istio.io/v1
kind: Telemetry
{{ include "shopmesh-lib.metadata" (dict "ctx" .ctx "name" (printf "%s-traces" .gateway.name) "namespace" .gateway.namespace) }}
spec:
  targetRefs:
    - group: gateway.networking.k8s.io
      kind: Gateway
      name: {{ .gateway.name }}
  tracing:
    - providers:
        - name: {{ include "shopmesh-lib.mesh.tracingProvider" . }}
      randomSamplingPercentage: {{ include "shopmesh-lib.mesh.samplingPercentage" $c }}
{{- end -}}

{{/* The tracing provider's name, which k8s/scripts/mesh-istio.sh reads from the rendered Telemetry objects. */}}
{{- define "shopmesh-lib.mesh.tracingProvider" -}}
shopmesh-otel
{{- end -}}

{{/* global.otel.samplerRatio as the percentage Istio takes (to 0.01). */}}
{{- define "shopmesh-lib.mesh.samplingPercentage" -}}
{{ round (mulf .otel.samplerRatio 100) 2 }}
{{- end -}}

{{/* The destinations and retries of the service's VirtualService routes (_mesh.tpl, Istio). */}}
{{- define "shopmesh-lib.mesh.istio-route" -}}
{{- $c := .c -}}
{{- $host := include "shopmesh-lib.host" (dict "service" $c.name "namespace" $c.namespace "domain" $c.clusterDomain) -}}
route:
  {{- range $track, $weight := ternary (dict "stable" (sub 100 $c.canary.weight) "canary" $c.canary.weight) (dict "" 100) $c.canary.enabled }}
  - destination:
      host: {{ $host }}
      port:
        number: {{ $c.grpcPort }}
      {{- with $track }}
      subset: {{ . }}
      {{- end }}
    {{- if $track }}
    weight: {{ $weight }}
    {{- end }}
  {{- end }}
# Replaces Istio's default (2 retries on connect-failure,refused-stream,unavailable,cancelled,
# retriable-status-codes): only failures where the request never reached the service, safe for
# every method. The callers' chassis retries UNAVAILABLE and CANCELLED (a server shutting down,
# grpc/grpc#41785) of idempotent methods itself, and the caller's grpc-timeout bounds each call (no
# route timeout here).
retries:
  attempts: 2
  retryOn: connect-failure,refused-stream
{{- end -}}

{{- define "shopmesh-lib.mesh.linkerd" -}}
{{- $c := .c -}}
{{- $any := printf "%s-any-network" $c.name -}}
{{- /* gRPC is HTTP/2. Not `gRPC`: for a gRPC Server Linkerd applies GRPCRoutes, and the routes below (the
     per-route authorization: health open, the rest to callers) are HTTPRoutes, which apply to HTTP/2.
     accessPolicy deny: only what an AuthorizationPolicy allows. */ -}}
{{ include "shopmesh-lib.mesh.linkerd-server" (dict "ctx" . "port" "grpc" "protocol" "HTTP/2") }}
---
{{ include "shopmesh-lib.mesh.linkerd-server" (dict "ctx" . "port" "metrics" "protocol" "HTTP/1") }}
---
{{ include "shopmesh-lib.mesh.linkerd-route" (dict "ctx" . "name" "health" "type" "PathPrefix" "path" "/grpc.health.v1.Health/") }}
---
{{- /* Every other method (the longer health prefix, and each method's exact path below, win over this one):
     open to clients at the edge; elsewhere authorized for nobody, so that a method no caller is granted is
     refused (PERMISSION_DENIED) rather than unrouted. */}}
{{ include "shopmesh-lib.mesh.linkerd-route" (dict "ctx" . "name" "rpc" "type" "PathPrefix" "path" "/") }}
---
# Any client, meshed or not: the kubelet's probes are plaintext from the node. The NetworkPolicy still
# decides who reaches the port at all.
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
{{ include "shopmesh-lib.metadata" (dict "ctx" . "name" $any) }}
spec:
  networks:
    - cidr: 0.0.0.0/0
    - cidr: ::/0
---
{{ include "shopmesh-lib.mesh.linkerd-authorization" (dict "ctx" . "name" "health" "target" (list "HTTPRoute" "health") "authn" (list "NetworkAuthentication" $any)) }}
---
{{ include "shopmesh-lib.mesh.linkerd-authorization" (dict "ctx" . "name" "metrics" "target" (list "Server" "metrics") "authn" (list "NetworkAuthentication" $any)) }}
{{- if $c.edge }}
---
# The edge: every method from anyone the NetworkPolicy lets in; the gateway authenticates users.
{{ include "shopmesh-lib.mesh.linkerd-authorization" (dict "ctx" . "name" "clients" "target" (list "HTTPRoute" "rpc") "authn" (list "NetworkAuthentication" $any)) }}
{{- end }}
{{- if $c.httpApi.enabled }}
---
{{- /* HTTP/1.1 from browsers and curl, HTTP/2 from gRPC-Web and gRPC clients: Linkerd detects which. */}}
{{ include "shopmesh-lib.mesh.linkerd-server" (dict "ctx" . "port" "http" "protocol" "unknown") }}
---
# The HTTP/JSON API: anyone the NetworkPolicy lets in (and the kubelet's probes of the http-api container).
{{ include "shopmesh-lib.mesh.linkerd-authorization" (dict "ctx" . "name" "http" "target" (list "Server" "http") "authn" (list "NetworkAuthentication" $any)) }}
---
{{ include "shopmesh-lib.mesh.linkerd-server" (dict "ctx" . "port" "http-metrics" "protocol" "HTTP/1") }}
---
{{ include "shopmesh-lib.mesh.linkerd-authorization" (dict "ctx" . "name" "http-metrics" "target" (list "Server" "http-metrics") "authn" (list "NetworkAuthentication" $any)) }}
{{- end }}
{{- if $c.monitoring.enabled }}
---
{{- /* The proxy's own admin port, where the PodMonitor <name>-proxy scrapes (and the kubelet probes the
     proxy): it is not intercepted, yet Linkerd applies the cluster's default policy to it, which a
     hardened cluster sets to deny; as `linkerd viz allow-scrapes` does, it is opened to any network. */}}
{{ include "shopmesh-lib.mesh.linkerd-server" (dict "ctx" . "port" "linkerd-admin" "protocol" "HTTP/1") }}
---
{{ include "shopmesh-lib.mesh.linkerd-authorization" (dict "ctx" . "name" "linkerd-admin" "target" (list "Server" "linkerd-admin") "authn" (list "NetworkAuthentication" $any)) }}
{{- end }}
{{- /* Per method, not per caller: Linkerd sends a request to one route, the most specific, so two callers'
     routes with the same exact path (orders and recommendations both call BatchGetProducts) would leave one
     of them refused. One route per method called, admitting all of its callers. */}}
{{- range $method, $callers := $c.methodCallers }}
{{- $route := printf "rpc-%s" (lower $method) }}
---
{{ include "shopmesh-lib.mesh.linkerd-route" (dict "ctx" $ "name" $route "type" "Exact" "path" (printf "/%s/%s" (first $c.grpcServices) $method)) }}
---
# The services that call {{ $method }}, by their mTLS identity (their ServiceAccount).
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
{{ include "shopmesh-lib.metadata" (dict "ctx" $ "name" (printf "%s-%s" $c.name $route)) }}
spec:
  identityRefs:
    {{- range $callers }}
    - kind: ServiceAccount
      name: {{ . }}
    {{- end }}
---
{{ include "shopmesh-lib.mesh.linkerd-authorization" (dict "ctx" $ "name" $route "target" (list "HTTPRoute" $route) "authn" (list "MeshTLSAuthentication" (printf "%s-%s" $c.name $route))) }}
{{- end }}
{{- if $c.canary.enabled }}
---
# Traffic splitting: meshed callers of <name> reach the canary's Service for canary.weight percent of
# their calls (Gateway API GRPCRoute on the Service, as Linkerd routes outbound gRPC).
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
{{ include "shopmesh-lib.metadata" (dict "ctx" . "name" (printf "%s-split" $c.name)) }}
spec:
  parentRefs:
    - group: core
      kind: Service
      name: {{ $c.name }}
      port: {{ $c.grpcPort }}
  rules:
    - backendRefs:
        - name: {{ $c.name }}-stable
          port: {{ $c.grpcPort }}
          weight: {{ sub 100 $c.canary.weight }}
        - name: {{ $c.name }}-canary
          port: {{ $c.grpcPort }}
          weight: {{ $c.canary.weight }}
{{- end }}
{{- end -}}

{{/* A Linkerd Server for one named port of the service's pods: .port, .protocol. */}}
{{- define "shopmesh-lib.mesh.linkerd-server" -}}
{{- $c := .ctx.c -}}
apiVersion: policy.linkerd.io/v1beta3
kind: Server
{{ include "shopmesh-lib.metadata" (dict "ctx" .ctx "name" (printf "%s-%s" $c.name .port)) }}
spec:
  podSelector:
    matchLabels:
      {{- include "shopmesh-lib.selectorLabels" $c | nindent 6 }}
  port: {{ .port }}
  proxyProtocol: {{ .protocol }}
  accessPolicy: deny
{{- end -}}

{{/* An HTTPRoute <service>-<.name> on the gRPC Server, for .path (.type: PathPrefix or Exact). */}}
{{- define "shopmesh-lib.mesh.linkerd-route" -}}
{{- $c := .ctx.c -}}
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
{{ include "shopmesh-lib.metadata" (dict "ctx" .ctx "name" (printf "%s-%s" $c.name .name)) }}
spec:
  parentRefs:
    - group: policy.linkerd.io
      kind: Server
      name: {{ $c.name }}-grpc
  rules:
    - matches:
        - path:
            type: {{ .type }}
            value: {{ .path }}
{{- end -}}

{{/* An AuthorizationPolicy <service>-<.name>: .target (kind, name suffix) admits .authn (kind, name). */}}
{{- define "shopmesh-lib.mesh.linkerd-authorization" -}}
{{- $c := .ctx.c -}}
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
{{ include "shopmesh-lib.metadata" (dict "ctx" .ctx "name" (printf "%s-%s" $c.name .name)) }}
spec:
  targetRef:
    group: policy.linkerd.io
    kind: {{ index .target 0 }}
    name: {{ $c.name }}-{{ index .target 1 }}
  requiredAuthenticationRefs:
    - group: policy.linkerd.io
      kind: {{ index .authn 0 }}
      name: {{ index .authn 1 }}
{{- end -}}

{{/*
Which mesh's proxy a pod of this release gets (the services' and their `helm test` pods), as YAML with
`labels` and `annotations`: the release's own mesh is asked for, every other mesh is refused. Injection is
by pod, never by namespace (k8s/scripts/mesh-*.sh leave the namespace alone), and the refusal holds where
someone turned a mesh on for the whole namespace anyway: a proxy this release was not rendered for has no
NetworkPolicy egress to its control plane, so it never gets its configuration and the pod never becomes
ready (and a test pod with a plain sidecar never completes).

The proxy runs as a native sidecar (Kubernetes >= 1.29: shopmesh-lib.config fails the render below; Istio >= 1.24,
the first to read sidecar.istio.io/nativeSidecar per pod, istio/istio#53490), which the kubelet stops only after the pod's
containers have exited. A plain sidecar gets SIGTERM with the service: Istio's drains 5 s then exits,
Linkerd's refuses new connections at once, while the chassis serves for the drain delay, finishes calls
and runs its hooks (which call out: the saga's steps, relays) for up to 30 s; and a `helm test` pod's
plain sidecar would keep the pod from ever completing.
*/}}
{{- define "shopmesh-lib.mesh.injection" -}}
{{- $c := .c -}}
labels:
  sidecar.istio.io/inject: {{ ternary "true" "false" (eq $c.mesh "istio") | quote }}
annotations:
  linkerd.io/inject: {{ ternary "enabled" "disabled" (eq $c.mesh "linkerd") }}
  {{- if eq $c.mesh "istio" }}
  sidecar.istio.io/nativeSidecar: "true"
  {{- else if eq $c.mesh "linkerd" }}
  # One switch, three names over Linkerd's releases (alpha up to 2.18, then beta, now GA); each
  # release reads its own and ignores the others.
  config.alpha.linkerd.io/proxy-enable-native-sidecar: "true"
  config.beta.linkerd.io/proxy-enable-native-sidecar: "true"
  config.linkerd.io/proxy-enable-native-sidecar: "true"
  {{- end }}
{{- end -}}

{{/*
The ports of the peers that speak first, NATS and the SMTP relay, as a YAML list (those the service
reaches). Neither mesh's proxy can tell their protocol from the client's first bytes, because the client
sends none until the server greets it: Linkerd waits 10 s for them on any port outside its default opaque
list (its docs name NATS and SMTP), longer than the chassis' NATS connect waits (5 s); an Istio sidecar
that sniffs a port waits without end. Both peers are outside the mesh (no mTLS to keep), so the pods'
connections to these ports bypass the proxy (_deployment.tpl). k8s/infra's Services also declare them
opaque / TCP, for any other meshed client.
*/}}
{{- define "shopmesh-lib.mesh.serverFirstPorts" -}}
{{- $c := .c -}}
{{- $ports := list -}}
{{- if $c.nats.enabled }}{{ $ports = append $ports $c.nats.port }}{{ end -}}
{{- if $c.email.enabled }}{{ $ports = append $ports $c.email.port }}{{ end -}}
{{- toYaml $ports -}}
{{- end -}}
