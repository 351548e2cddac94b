{{/*
`helm test`: a pod (from the service's own image: it has grpcio and grpc_health) checks the service's
grpc.health.v1 status over the Service address: overall ("") and each gRPC service it serves. The
umbrella chart runs every service's hook, so `helm test shopmesh` checks the whole system.
Under the mesh policy (`--meshed`) it also checks that the policy is enforced: its identity may call
health and nothing else, so a call to any other method must come back PERMISSION_DENIED from the mesh
(a name no service has, so the call could do nothing even where the policy is missing). Not at the edge,
whose policy refuses nobody anything.
For the edge with its http-api container (`--http <base URL>`) it also calls the HTTP/JSON API: GET
/v1/orders without a token must come back 401 with the gateway's ErrorInfo TOKEN_MISSING as JSON, which
takes Envoy transcoding with the API's descriptor set, the gateway behind it, and the status mapping, and
no other service; GET / must be the storefront's page, and its script and style sheet must be served.
tests/mesh/test_helm_test_hook.py runs this script against a service with and without a policy in front,
and against a real gateway with and without its HTTP/JSON edge.
*/}}
{{- define "shopmesh-lib.healthcheck.py" -}}
import json
import sys
import time
import urllib.error
import urllib.request
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
args = sys.argv[1:]
meshed = "--meshed" in args
args = [arg for arg in args if arg != "--meshed"]
http = None
if "--http" in args:
    at = args.index("--http")
    http = args[at + 1]
    del args[at : at + 2]
target, *served = args
failed = 0
def report(ok, what, text, where=None):
    global failed
    failed += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {where or target} {what}: {text}", flush=True)
with grpc.insecure_channel(target) as channel:
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ["", *served]:
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10, wait_for_ready=True).status
            text = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        except grpc.RpcError as exc:
            status, text = None, f"{exc.code().name}: {exc.details()}"
        report(status == health_pb2.HealthCheckResponse.SERVING, name or "(overall)", text)
    for name in served if meshed else []:
        try:
            channel.unary_unary(f"/{name}/HelmTestProbe")(b"", timeout=10, wait_for_ready=True)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        refused = code == grpc.StatusCode.PERMISSION_DENIED
        report(refused, f"{name}/* as this test", f"{code.name}, {'refused by the mesh' if refused else 'the mesh let it through'}")
def get(url):
    """(HTTP status, body, content type) of a GET; connection failures are retried for a while (a proxy
    still starting)."""
    for attempt in range(10):
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read(), response.headers.get("content-type", "")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers.get("content-type", "")
        except OSError as exc:
            error = exc
            time.sleep(2)
    return None, str(error).encode(), ""
if http:
    code, body, _ = get(f"{http}/v1/orders")
    try:
        reasons = [d.get("reason") for d in json.loads(body).get("details") or []]
    except (ValueError, AttributeError, TypeError):  # not JSON, or not a google.rpc.Status
        reasons = []
    ok = code == 401 and "TOKEN_MISSING" in reasons
    report(ok, "GET /v1/orders without a token", f"{code} {reasons or body[:200]!r}", where=http)
    # The storefront, which the edge answers from its ConfigMap's files (no service behind it).
    code, body, kind = get(f"{http}/")
    ok = code == 200 and kind.startswith("text/html") and b'src="/assets/app.js"' in body
    report(ok, "GET / (the storefront)", f"{code} {kind} {body[:40]!r}", where=http)
    for asset, expected in (
        {{- range $i, $asset := include "shopmesh-lib.httpApi-storefrontAssets" . | fromYamlArray }}
        {{- if $i }}, {{ end }}({{ index $asset 0 | quote }}, {{ index $asset 1 | quote }})
        {{- end }}):
        code, body, kind = get(f"{http}/assets/{asset}")
        ok = code == 200 and kind.startswith(expected) and len(body) > 0
        report(ok, f"GET /assets/{asset}", f"{code} {kind} {len(body)} bytes", where=http)
sys.exit(1 if failed else 0)
{{- end -}}

{{- define "shopmesh-lib.test-networkpolicy" -}}
{{- $c := .c -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ $c.name }}-health-test
  namespace: {{ $c.namespace }}
  labels:
    {{- include "shopmesh-lib.labels" . | nindent 4 }}
  annotations:
    helm.sh/hook: test
    helm.sh/hook-weight: "-5"
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  podSelector:
    matchLabels:
      app.kubernetes.io/name: {{ $c.name }}-health-test
      app.kubernetes.io/component: helm-test
  policyTypes: [Ingress, Egress]
  ingress: []
  egress:
    - to:
        {{- toYaml $c.networkPolicy.dns | nindent 8 }}
      ports:
        - protocol: UDP
          port: 53
        - protocol: TCP
          port: 53
    - to:
        - podSelector:
            matchLabels:
              {{- include "shopmesh-lib.selectorLabels" $c | nindent 14 }}
      ports:
        {{- include "shopmesh-lib.grpcPorts" $c | nindent 8 }}
        {{- if $c.httpApi.enabled }}
        - protocol: TCP
          port: {{ $c.httpApi.port }}
        {{- end }}
    {{- include "shopmesh-lib.meshEgress" $c }}
    {{- /* The environment's (a proxy, a control plane elsewhere): the test pod runs there too. Not a service's
         own extraEgress, which is for what that service reaches. */}}
    {{- with $c.networkPolicy.environmentEgress }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/*
The test pod's own identity: under a mesh its mTLS identity, which the mesh policy lets call nothing but
grpc.health.v1.Health (with the service's own ServiceAccount it would be able to call what the service
calls).
*/}}
{{- define "shopmesh-lib.test-serviceaccount" -}}
{{- $c := .c -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $c.name }}-health-test
  namespace: {{ $c.namespace }}
  labels:
    {{- include "shopmesh-lib.test-labels" . | nindent 4 }}
  annotations:
    helm.sh/hook: test
    helm.sh/hook-weight: "-10"
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
automountServiceAccountToken: false
{{- end -}}

{{- define "shopmesh-lib.test-pod" -}}
{{- $c := .c -}}
apiVersion: v1
kind: Pod
metadata:
  name: {{ $c.name }}-health-test
  namespace: {{ $c.namespace }}
  {{- $injection := include "shopmesh-lib.mesh.injection" . | fromYaml }}
  {{- /* podLabels and podAnnotations too (a platform's admission policies ask every pod for its team, its cost
       centre), the chart's own winning: its NetworkPolicies select these labels, Helm reads the hook's. */}}
  labels:
    {{- toYaml (merge (include "shopmesh-lib.test-labels" . | fromYaml) $injection.labels $c.podLabels) | nindent 4 }}
  {{- /* Kept after it passes, until the next `helm test` replaces it: `helm test --logs` (docs, make
       deploy-staging) reads the pods' logs after Helm has run the hooks' delete policies, so Helm 3 fails
       on a pod that hook-succeeded already deleted ("unable to get pod logs ... not found").
       Meshed, so the check goes over the mesh's mTLS as the services' calls do; the proxy is a native
       sidecar (shopmesh-lib.mesh.injection), which stops when the check exits. */}}
  {{- $annotations := dict "helm.sh/hook" "test" "helm.sh/hook-delete-policy" "before-hook-creation" }}
  {{- $skips := include "shopmesh-lib.checkovSkips" (dict "imageDigest" $c.imageDigest "testPod" true) | fromYaml }}
  annotations:
    {{- toYaml (merge $annotations $injection.annotations $skips $c.podAnnotations) | nindent 4 }}
spec:
  restartPolicy: Never
  serviceAccountName: {{ $c.name }}-health-test
  automountServiceAccountToken: false
  {{- with include "shopmesh-lib.scheduling" (dict "c" $c "testPod" true) | trim }}
  {{- . | nindent 2 }}
  {{- end }}
  enableServiceLinks: false
  securityContext:
    runAsNonRoot: true
    runAsUser: 10001
    runAsGroup: 10001
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: grpc-health
      image: {{ $c.image | quote }}
      imagePullPolicy: {{ $c.imagePullPolicy }}
      command:
        - /app/.venv/bin/python
        - -c
        - |
          {{- include "shopmesh-lib.healthcheck.py" . | nindent 10 }}
        {{- /* Not the edge: its policy lets anyone call every method (_mesh.tpl), so nothing the mesh
             refuses the test pod is there to check; its health, and its HTTP/JSON API, still are. */}}
        {{- if and $c.meshPolicy.enabled (not $c.edge) }}
        - --meshed
        {{- end }}
        {{- if $c.httpApi.enabled }}
        - --http
        - {{ printf "http://%s:%v" (include "shopmesh-lib.host" (dict "service" $c.name "namespace" $c.namespace "domain" $c.clusterDomain)) $c.httpApi.port | quote }}
        {{- end }}
        - {{ include "shopmesh-lib.address" (dict "service" $c.name "namespace" $c.namespace "domain" $c.clusterDomain) | quote }}
        {{- range $c.grpcServices }}
        - {{ . | quote }}
        {{- end }}
      resources:
        requests:
          cpu: 50m
          memory: 64Mi
        limits:
          cpu: 500m
          memory: 128Mi
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
{{- end -}}


{{- define "shopmesh-lib.test-labels" -}}
app.kubernetes.io/name: {{ .c.name }}-health-test
app.kubernetes.io/component: helm-test
app.kubernetes.io/part-of: shopmesh
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}
