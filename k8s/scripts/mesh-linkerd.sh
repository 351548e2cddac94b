#!/usr/bin/env bash
# Install Linkerd (CRDs, the CNI plugin so meshed pods need no NET_ADMIN init container, the control
# plane) into the kind cluster; Linkerd 2.19 or later (Server v1beta3 with accessPolicy, GRPCRoute v1, and a
# policy controller that finds a native sidecar's linkerd-admin port: docs/mesh.md, "Versions").
# The charts bring the mesh policy (global.mesh=linkerd); deploy with `make skaffold-dev PROFILE=linkerd`.
source "$(dirname "$0")/lib.sh"
require linkerd "$HINT_LINKERD" kubectl "$HINT_KUBECTL"
context="kind-${KIND_CLUSTER}"
linkerd --context "$context" check --pre --linkerd-cni-enabled
# The Gateway API's CRDs (lib.sh). Linkerd 2.19 and later no longer install them; earlier releases are told
# not to, so one version is in the cluster.
install_gateway_api "$context"
linkerd --context "$context" install-cni | kubectl --context "$context" apply -f -
linkerd --context "$context" install --crds --set installGatewayAPI=false | kubectl --context "$context" apply -f -
linkerd --context "$context" install --linkerd-cni-enabled | kubectl --context "$context" apply -f -
linkerd --context "$context" check
# No namespace-wide injection: a release rendered with global.mesh=linkerd asks for its proxies pod by pod,
# and a release without it (or with Istio) must not get proxies it has no NetworkPolicy egress for.
echo "Linkerd installed; a release with global.mesh=linkerd (make skaffold-dev PROFILE=linkerd) gets proxies."
