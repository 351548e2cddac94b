#!/usr/bin/env bash
# Install Istio (with its CNI plugin, so meshed pods need no NET_ADMIN init container and the namespace
# stays Pod Security "restricted") into the kind cluster. The shopmesh mesh resources (mTLS,
# authorization from the call graph) come with the charts (global.mesh=istio); deploy with `make skaffold-dev PROFILE=istio`.
source "$(dirname "$0")/lib.sh"
# istioctl 1.24 or later: the first Istio whose injector reads the charts' sidecar.istio.io/nativeSidecar
# (docs/mesh.md, "Versions").
require istioctl "$HINT_ISTIOCTL" kubectl "$HINT_KUBECTL"
context="kind-${KIND_CLUSTER}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
if [ ! -x "$root/.venv/bin/python" ]; then
  echo "error: $root/.venv is missing: run make setup (the charts are rendered to configure Istio's tracing)" >&2
  exit 1
fi
# The sidecars' spans: the mesh-wide OpenTelemetry provider that the charts' Telemetry objects select, at the
# collector the services export to, both as the charts render them (docs/mesh.md, "Traces through the mesh");
# and the mesh's default retry policy and connect timeout, which the ingress gateway's routes to the edge get
# (docs/mesh.md, "Retries and deadlines"): only requests that never reached the edge, not Istio's own default,
# and the local mesh's 1 s, not Istio's 10 s.
tracing="$(mktemp)"
trap 'rm -f "$tracing"' EXIT
"$root/.venv/bin/python" "$root/k8s/render.py" istio-tracing >"$tracing"
# The Gateway API's CRDs (lib.sh) before istiod starts: its GatewayClass "istio" serves k8s/ingress's Gateway.
install_gateway_api "$context"
istioctl install --context "$context" -y --set profile=minimal --set components.cni.enabled=true -f "$tracing"
# No namespace-wide injection: a release rendered with global.mesh=istio asks for its sidecars pod by pod,
# and a release without it (or with Linkerd) must not get proxies it has no NetworkPolicy egress for.
echo "Istio installed; a release with global.mesh=istio (make skaffold-dev PROFILE=istio) gets sidecars."
