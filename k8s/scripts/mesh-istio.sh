#!/usr/bin/env bash
# Install Istio (with its CNI plugin, so meshed pods need no NET_ADMIN init container and the namespace
# stays Pod Security "restricted") into the kind cluster. The shopmesh mesh resources (mTLS,
# authorization from the call graph) come with the charts (global.mesh=istio); deploy with `make skaffold-dev PROFILE=istio`.
source "$(dirname "$0")/lib.sh"
require istioctl "$HINT_ISTIOCTL" kubectl "$HINT_KUBECTL"
context="kind-${KIND_CLUSTER}"
# The Gateway API's CRDs (lib.sh) before istiod starts: its GatewayClass "istio" serves k8s/ingress's Gateway.
install_gateway_api "$context"
istioctl install --context "$context" -y --set profile=minimal --set components.cni.enabled=true
kubectl --context "$context" label namespace shopmesh istio-injection=enabled --overwrite
echo "Istio installed; pods in namespace shopmesh get sidecars (global.mesh=istio also labels them)."
